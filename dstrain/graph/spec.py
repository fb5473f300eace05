"""A sample's graph structure as a small hashable value: a builder and its arguments.

A model says which graph each sample has with a ``GraphSpec`` -- ``GraphSpec(chain, (7, 26, 2))``
is a 2nd-order chain of 7 variables with 26 states -- and the learner builds the ``RegionGraph``
with the counting numbers and temperature of its inference options.  Graphs are built once per
(spec, counting numbers, eps) and cached: a data set has few distinct structures, and everything
downstream (batch templates, engines) is cached by graph identity.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .builders import chain, fully_connected, grid, regions
from .region_graph import RegionGraph

__all__ = ["GraphSpec", "chain", "fully_connected", "grid", "regions"]


@dataclass(frozen=True)
class GraphSpec:
    """``builder(*args, counting_numbers=..., eps=...)`` returns the sample's RegionGraph;
    `args` must be hashable (ints, tuples)."""

    builder: Callable[..., RegionGraph]
    args: tuple

    def build(self, counting_numbers: str = "convex", eps: float = 1.0) -> RegionGraph:
        return _build(self, counting_numbers, float(eps))

    @property
    def graph(self) -> RegionGraph:
        """The graph with the default counting numbers: for its structure (sizes, edges)."""
        return self.build()

    @property
    def num_potentials(self) -> int:
        return _counts(self)[0]

    @property
    def num_messages(self) -> int:
        """Entries of a sample's message vector (one vector per edge, as long as the child)."""
        return _counts(self)[1]

    @property
    def num_variables(self) -> int:
        return len(self.graph.cardinalities)


@functools.lru_cache(maxsize=4096)
def _build(spec: GraphSpec, counting_numbers: str, eps: float) -> RegionGraph:
    return spec.builder(*spec.args, counting_numbers=counting_numbers, eps=eps)


@functools.lru_cache(maxsize=4096)
def _counts(spec: GraphSpec) -> tuple[int, int]:
    graph = spec.graph
    sizes = np.asarray(graph.sizes, dtype=np.int64)
    return int(sizes.sum()), int(sum(sizes[child] for child, _ in graph.edges))
