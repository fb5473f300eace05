"""Marginals and MAP of a small tree-shaped region graph with dstrain's functional API.

Three variables with cardinalities 2, 3 and 2, one region per variable and one per edge
(0-1 and 1-2), random potentials. The graph is a tree, so with Bethe counting numbers the
beliefs are the exact marginals and the dual value is eps * log Z.
"""
import numpy as np

from dstrain.inference import map_assignment, marginals

cardinalities = [2, 3, 2]
regions = [(0,), (1,), (2,), (0, 1), (1, 2)]
rng = np.random.default_rng(0)
potentials = [rng.normal(size=tuple(cardinalities[v] for v in r)) for r in regions]
beliefs, dual = marginals(cardinalities, regions, potentials, counting_numbers="bethe")
print(beliefs[1], dual)          # exact marginals of y_1 and eps*log Z: the graph is a tree
print(map_assignment(cardinalities, regions, potentials))
