"""Loop-based convex belief propagation on one sample: slow, written to be obviously right.

Messages live in a dict keyed by (child, parent) region indices; every formula of docs/design.md §2 is
written out per region and per parent with plain numpy on that region's table.  Tests compare the
vectorised engine against this, update for update; the benchmark uses it as the naive baseline.
"""
from __future__ import annotations

import numpy as np

from ..graph.region_graph import RegionGraph


def _soft_max(values: np.ndarray, scale: float, axis=None) -> np.ndarray:
    """scale * log sum exp(values / scale) over axis; the plain max where scale == 0."""
    if scale == 0:
        return values.max(axis=axis)
    z = values / scale
    peak = z.max(axis=axis, keepdims=True)
    out = peak + np.log(np.exp(z - peak).sum(axis=axis, keepdims=True))
    return scale * (out.squeeze(axis) if axis is not None else out.item())


def _expand(graph: RegionGraph, child: int, parent: int, table: np.ndarray) -> np.ndarray:
    """A table over the child's states broadcast to the parent's state space."""
    child_vars, parent_vars = graph.regions[child], graph.regions[parent]
    # order the child's axes as they appear in the parent, then insert the parent's other axes
    order = sorted(range(len(child_vars)), key=lambda a: parent_vars.index(child_vars[a]))
    moved = np.transpose(table, order)
    shape = [graph.cardinalities[v] if v in child_vars else 1 for v in parent_vars]
    return np.broadcast_to(moved.reshape(shape), tuple(graph.cardinalities[v] for v in parent_vars))


def _marginalise(graph: RegionGraph, parent: int, child: int, table: np.ndarray,
                 scale: float) -> np.ndarray:
    """scale * log sum exp (or max) of a parent table over y_p \\ y_c, axes in the child's order."""
    child_vars, parent_vars = graph.regions[child], graph.regions[parent]
    summed = tuple(a for a, v in enumerate(parent_vars) if v not in child_vars)
    reduced = _soft_max(table, scale, axis=summed) if summed else table
    kept = [v for v in parent_vars if v in child_vars]
    return np.transpose(reduced, [kept.index(v) for v in child_vars])


class ReferenceBP:
    """Convex BP for one RegionGraph, one region at a time, in the colour order of the engine."""

    def __init__(self, graph: RegionGraph, potentials, messages=None):
        self.graph = graph
        self.potentials = graph.check_potentials(potentials)
        self.messages = {edge: np.zeros(graph.shapes[edge[0]]) for edge in graph.edges}
        if messages is not None:
            for edge, table in messages.items():
                self.messages[edge] = np.array(table, dtype=np.float64)

    def scale(self, r: int) -> float:
        return self.graph.eps * self.graph.counting_numbers[r]

    def reparameterised(self, r: int) -> np.ndarray:
        g = self.graph
        out = self.potentials[r].copy()
        for c in g.children[r]:
            out = out + _expand(g, c, r, self.messages[(c, r)])
        for p in g.parents[r]:
            out = out - self.messages[(r, p)]
        return out

    def update_region(self, r: int) -> float:
        """Block update of all messages r -> p; returns the largest change."""
        g = self.graph
        mu = {}
        for p in g.parents[r]:
            without_r = self.reparameterised(p) - _expand(g, r, p, self.messages[(r, p)])
            mu[p] = _marginalise(g, p, r, without_r, self.scale(p))
        total = self.potentials[r].copy()
        for c in g.children[r]:
            total = total + _expand(g, c, r, self.messages[(c, r)])
        total = total + sum(mu.values())
        c = g.counting_numbers
        chat = c[r] + sum(c[p] for p in g.parents[r])
        change = 0.0
        for p in g.parents[r]:
            new = c[p] / chat * total - mu[p]
            new = new - new.max()
            change = max(change, float(np.abs(new - self.messages[(r, p)]).max()))
            self.messages[(r, p)] = new
        return change

    def sweep(self) -> float:
        return max((self.update_region(r) for colour in self.graph.colours for r in colour),
                   default=0.0)

    def dual(self) -> float:
        return float(sum(_soft_max(self.reparameterised(r), self.scale(r))
                         for r in range(len(self.graph.regions))))

    def beliefs(self) -> list[np.ndarray]:
        g = self.graph
        out: list = [None] * len(g.regions)
        for r in g.belief_order():
            source = g.belief_source(r)
            if source is None:
                z = self.reparameterised(r) / self.scale(r)
                z = np.exp(z - z.max())
                out[r] = z / z.sum()
            else:
                out[r] = _sum_out(g, source, r, out[source])
        return out

    def run(self, max_sweeps: int = 1000, tol: float = 1e-6) -> int:
        for sweep in range(1, max_sweeps + 1):
            if self.sweep() < tol:
                return sweep
        return max_sweeps


def _sum_out(graph: RegionGraph, parent: int, child: int, table: np.ndarray) -> np.ndarray:
    """Plain sum of a parent's belief over y_p \\ y_c, axes in the child's order."""
    child_vars, parent_vars = graph.regions[child], graph.regions[parent]
    summed = tuple(a for a, v in enumerate(parent_vars) if v not in child_vars)
    reduced = table.sum(axis=summed)
    kept = [v for v in parent_vars if v in child_vars]
    return np.transpose(reduced, [kept.index(v) for v in child_vars])
