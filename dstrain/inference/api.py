"""The functional API of docs/design.md §8: one sample's region graph in, numpy out."""
from __future__ import annotations

import numpy as np

from ..graph import GraphBatch, RegionGraph
from .bp import ConvexBP
from .exact import forest_map, is_pairwise_forest

# temperature of the low-temperature inference that decodes loopy graphs, relative to the
# largest potential magnitude: small enough that beliefs concentrate on the maximiser
_DECODE_TEMPERATURE = 1e-3


def marginals(cardinalities, regions, potentials, counting_numbers="convex", eps=1.0,
              max_sweeps=1000, tol=1e-6):
    """Beliefs of every region and the dual value after convex belief propagation.

    Returns ``(beliefs, dual)``: a list of arrays shaped like ``potentials`` and a float.  With
    ``bethe`` counting numbers on a tree the beliefs are the exact marginals and
    ``dual == eps * log Z``.
    """
    graph = RegionGraph(cardinalities, regions, counting_numbers=counting_numbers, eps=eps)
    batch = GraphBatch([graph])
    result = ConvexBP(batch).run(batch.pack([potentials]), max_sweeps=max_sweeps, tol=tol)
    return [b.copy() for b in batch.unpack(result.beliefs)[0]], float(result.dual[0])


def map_assignment(cardinalities, regions, potentials, max_sweeps=2000, tol=1e-7):
    """A highest-scoring assignment (one state per variable, int64).

    Exact (max-product dynamic programming) when the regions form a pairwise forest; otherwise the
    argmax of variable beliefs after convex BP at a low temperature.
    """
    graph = RegionGraph(cardinalities, regions)   # validates the input
    potentials = graph.check_potentials(potentials)
    if is_pairwise_forest(graph.cardinalities, graph.regions):
        return forest_map(graph.cardinalities, graph.regions, potentials)
    magnitude = max(1.0, max(float(np.abs(p).max()) for p in potentials))
    beliefs, _ = marginals(cardinalities, regions, potentials, eps=_DECODE_TEMPERATURE * magnitude,
                           max_sweeps=max_sweeps, tol=tol * magnitude)
    assignment = np.zeros(len(graph.cardinalities), dtype=np.int64)
    # each variable's marginal from the smallest region that contains it
    for r in sorted(range(len(graph.regions)), key=lambda r: -len(graph.regions[r])):
        region = graph.regions[r]
        for axis, v in enumerate(region):
            other = tuple(a for a in range(len(region)) if a != axis)
            assignment[v] = int(np.argmax(beliefs[r].sum(axis=other)))
    return assignment
