"""Inference on region graphs: the small, stable functional API (docs/design.md §8) and the engines.

    beliefs, dual = marginals(cardinalities, regions, potentials,
                              counting_numbers="convex", eps=1.0, max_sweeps=1000, tol=1e-6)
    y = map_assignment(cardinalities, regions, potentials)

One sample in, numpy out.  Underneath: ``ConvexBP`` (vectorised, batched) on a ``GraphBatch``;
``exact`` (chains, forests) and ``brute_force`` (enumeration) for exact answers.
"""
from .api import map_assignment, marginals
from .bp import BPResult, ConvexBP
from .dense_crf import DenseCRF, dense_crf_marginals

__all__ = ["marginals", "map_assignment", "ConvexBP", "BPResult", "dense_crf_marginals", "DenseCRF"]
