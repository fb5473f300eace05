"""Region graphs of the applications: chains of order k (words), fully connected (tagging), grids
(4- or 8-connected: segmentation).

Region order is part of the contract with the potential nets: unaries first (variable order), then
pairs.  For chains the pairs come by distance (all distance-1 pairs, then distance-2, ...).
"""
from __future__ import annotations

from .region_graph import RegionGraph


def chain(length: int, num_states: int, order: int = 1, **graph_options) -> RegionGraph:
    """A chain of `length` variables with pairs at distances 1..order (2nd order: words)."""
    if length < 1 or order < 0:
        raise ValueError(f"chain: length = {length} must be >= 1 and order = {order} >= 0")
    regions = [(i,) for i in range(length)]
    regions += [(i, i + d) for d in range(1, order + 1) for i in range(length - d)]
    return RegionGraph([num_states] * length, regions, **graph_options)


def fully_connected(num_variables: int, num_states: int = 2, **graph_options) -> RegionGraph:
    """Unaries and every pair (i, j), i < j, in lexicographic order (image tagging)."""
    if num_variables < 1:
        raise ValueError(f"fully_connected: num_variables = {num_variables} must be >= 1")
    regions = [(i,) for i in range(num_variables)]
    regions += [(i, j) for i in range(num_variables) for j in range(i + 1, num_variables)]
    return RegionGraph([num_states] * num_variables, regions, **graph_options)


def grid(height: int, width: int, num_states: int, connectivity: int = 4,
         **graph_options) -> RegionGraph:
    """A grid, variables row-major; horizontal pairs, then vertical (segmentation).  With
    ``connectivity = 8`` diagonal pairs follow: down-right ((y, x), (y + 1, x + 1)), then
    down-left ((y, x + 1), (y + 1, x)), each row-major by its upper-left corner (y, x)."""
    if height < 1 or width < 1:
        raise ValueError(f"grid: height = {height} and width = {width} must be >= 1")
    if connectivity not in (4, 8):
        raise ValueError(f"grid: connectivity must be 4 or 8, got {connectivity}")
    index = lambda y, x: y * width + x  # noqa: E731
    regions = [(i,) for i in range(height * width)]
    regions += [(index(y, x), index(y, x + 1)) for y in range(height) for x in range(width - 1)]
    regions += [(index(y, x), index(y + 1, x)) for y in range(height - 1) for x in range(width)]
    if connectivity == 8:
        corners = [(y, x) for y in range(height - 1) for x in range(width - 1)]
        regions += [(index(y, x), index(y + 1, x + 1)) for y, x in corners]
        regions += [(index(y, x + 1), index(y + 1, x)) for y, x in corners]
    return RegionGraph([num_states] * (height * width), regions, **graph_options)


def regions(cardinalities: tuple[int, ...], region_list: tuple[tuple[int, ...], ...],
            **graph_options) -> RegionGraph:
    """Any structure: variables with these state counts and these regions (tuples of variables).
    For a GraphSpec pass tuples, so the spec is hashable."""
    return RegionGraph(list(cardinalities), [tuple(r) for r in region_list], **graph_options)
