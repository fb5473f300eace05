"""One sample's region graph: regions, parents, counting numbers, temperature, update schedule.

A region is a tuple of variable indices in any order; its potential is an array with one axis per
variable, in that order.  Parents are the direct supersets among the listed regions (the Hasse
diagram of the subset relation).  Everything that depends only on the *structure* (cardinalities and
regions) -- parents, child-state maps, the conflict colouring -- is computed once per structure and
cached, because the learner builds thousands of graphs with the same few structures.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

COUNTING_PRESETS = ("convex", "bethe", "trw")


@dataclass(frozen=True, eq=False)
class Structure:
    """Everything derived from (cardinalities, regions) alone; shared by graphs of equal structure."""

    cardinalities: tuple[int, ...]
    regions: tuple[tuple[int, ...], ...]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    # edge e links child region edges[e][0] to parent region edges[e][1]; ordered by child, then parent
    edges: tuple[tuple[int, int], ...]
    # child_state[e][k] = state of the child region at flat state k of the parent region
    child_state: tuple[np.ndarray, ...]
    # lists of region indices; regions of one colour may be updated in parallel
    colours: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod([self.cardinalities[v] for v in r])) for r in self.regions)


def _check_cardinalities(cardinalities) -> tuple[int, ...]:
    cards = tuple(cardinalities)
    for i, c in enumerate(cards):
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"cardinalities[{i}] = {c!r}: expected an integer >= 1")
    return tuple(int(c) for c in cards)


def _check_regions(cards: tuple[int, ...], regions) -> tuple[tuple[int, ...], ...]:
    checked, seen = [], {}
    for k, region in enumerate(regions):
        try:
            region = tuple(region)
        except TypeError:
            raise ValueError(f"regions[{k}] = {region!r}: expected a tuple of variable indices") from None
        if not region:
            raise ValueError(f"regions[{k}] is empty: a region needs at least one variable")
        for v in region:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"regions[{k}] = {region}: variable {v!r} is not an integer index")
            if not 0 <= v < len(cards):
                raise ValueError(f"regions[{k}] = {region} names unknown variable {v}: "
                                 f"variables are 0..{len(cards) - 1}")
        if len(set(region)) != len(region):
            raise ValueError(f"regions[{k}] = {region} repeats a variable")
        key = frozenset(region)
        if key in seen:
            raise ValueError(f"regions[{k}] = {region} duplicates regions[{seen[key]}] = "
                             f"{checked[seen[key]]} (same set of variables)")
        seen[key] = k
        checked.append(tuple(int(v) for v in region))
    if not checked:
        raise ValueError("empty graph: at least one region is needed")
    return tuple(checked)


def _child_state(cards, child, parent) -> np.ndarray:
    """For every flat state of `parent`, the flat state of `child` it restricts to."""
    parent_shape = tuple(cards[v] for v in parent)
    states = np.indices(parent_shape).reshape(len(parent), -1)
    child_axes = [parent.index(v) for v in child]
    return np.ravel_multi_index(tuple(states[a] for a in child_axes),
                                tuple(cards[v] for v in child)).astype(np.int64)


def _greedy_colouring(num_regions, parents, children) -> tuple[tuple[int, ...], ...]:
    """Colour the regions that send messages so that no two of one colour conflict.

    Two regions conflict when one is the other's parent or they share a parent: then one reads a
    message the other writes.  Greedy in region order gives 2 colours on chains, 3 on 2nd-order
    chains, a checkerboard on grids and n on fully connected graphs.
    """
    senders = [r for r in range(num_regions) if parents[r]]
    colour_of: dict[int, int] = {}
    for r in senders:
        neighbours = set(parents[r]) | set(children[r])
        for p in parents[r]:
            neighbours.update(children[p])
        taken = {colour_of[n] for n in neighbours if n in colour_of and n != r}
        colour = 0
        while colour in taken:
            colour += 1
        colour_of[r] = colour
    num_colours = max(colour_of.values(), default=-1) + 1
    return tuple(tuple(r for r in senders if colour_of[r] == c) for c in range(num_colours))


@functools.lru_cache(maxsize=4096)
def structure_of(cardinalities: tuple[int, ...], regions: tuple[tuple[int, ...], ...]) -> Structure:
    """Parents, children, edge maps and colouring of a structure (validated inputs, cached)."""
    sets = [frozenset(r) for r in regions]
    num = len(regions)
    supersets = [[q for q in range(num) if sets[r] < sets[q]] for r in range(num)]
    parents = []
    for r in range(num):
        # direct supersets: no listed region strictly between r and the parent
        direct = [q for q in supersets[r]
                  if not any(sets[m] < sets[q] for m in supersets[r] if m != q)]
        parents.append(tuple(direct))
    children = [[] for _ in range(num)]
    for r in range(num):
        for p in parents[r]:
            children[p].append(r)
    edges = tuple((r, p) for r in range(num) for p in parents[r])
    child_state = tuple(_child_state(cardinalities, regions[r], regions[p]) for r, p in edges)
    for m in child_state:
        m.setflags(write=False)
    colours = _greedy_colouring(num, parents, children)
    return Structure(cardinalities, regions, tuple(parents), tuple(tuple(c) for c in children),
                     edges, child_state, colours)


class RegionGraph:
    """A validated region graph with counting numbers and temperature.

    >>> g = RegionGraph([2, 2], [(0,), (1,), (0, 1)], counting_numbers="bethe")
    >>> g.parents[0], g.counting_numbers.tolist()
    ((2,), [0.0, 0.0, 1.0])
    """

    def __init__(self, cardinalities: Sequence[int], regions: Sequence[Sequence[int]],
                 counting_numbers: str | Sequence[float] = "convex", eps: float = 1.0):
        cards = _check_cardinalities(cardinalities)
        self.structure = structure_of(cards, _check_regions(cards, regions))
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps = {eps!r}: expected a number > 0") from None
        if not np.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps = {eps!r}: the temperature must be finite and > 0")
        self.eps = eps
        self.counting_numbers = self._counting_numbers(counting_numbers)
        self.counting_numbers.setflags(write=False)
        self._check_solvable()

    # structure passthroughs, so callers need not know about the cache
    cardinalities = property(lambda self: self.structure.cardinalities)
    regions = property(lambda self: self.structure.regions)
    parents = property(lambda self: self.structure.parents)
    children = property(lambda self: self.structure.children)
    edges = property(lambda self: self.structure.edges)
    colours = property(lambda self: self.structure.colours)
    sizes = property(lambda self: self.structure.sizes)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(self.cardinalities[v] for v in r) for r in self.regions]

    def _counting_numbers(self, spec) -> np.ndarray:
        num = len(self.regions)
        if isinstance(spec, str):
            if spec == "convex":
                return np.ones(num)
            if spec == "bethe":
                c = np.zeros(num)
                # parents have strictly more variables, so visit larger regions first
                for r in sorted(range(num), key=lambda r: -len(self.regions[r])):
                    c[r] = 1.0 - sum(c[p] for p in self.parents[r]) if self.parents[r] else 1.0
                return c
            if spec == "trw":
                return self._trw_counting_numbers()
            raise ValueError(f"counting_numbers = {spec!r}: expected one of {COUNTING_PRESETS} "
                             f"or a list of {num} numbers")
        try:
            c = np.asarray(spec, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"counting_numbers = {spec!r}: expected one of {COUNTING_PRESETS} "
                             f"or a list of {num} numbers") from None
        if c.shape != (num,) or not np.all(np.isfinite(c)):
            raise ValueError(f"counting_numbers: expected {num} finite numbers (one per region), "
                             f"got shape {c.shape}")
        return c.copy()

    def _trw_counting_numbers(self) -> np.ndarray:
        """Tree-reweighted counting numbers of a pairwise graph: every edge of a connected part
        with V variables and E edges gets rho = (V - 1) / E (its appearance probability under
        the uniform mixture of spanning trees when all edges are alike: complete graphs, cycles,
        tori; exact, = Bethe, on trees), every variable 1 - sum of its edges' rho.  A convex free
        energy that, unlike ``convex``, does not count each edge's entropy in full."""
        if any(len(r) > 2 for r in self.regions):
            raise ValueError("counting_numbers = 'trw' is defined for pairwise graphs (regions of one "
                             "or two variables); give the counting numbers as a list instead")
        root = list(range(len(self.cardinalities)))

        def find(v):
            while root[v] != v:
                root[v] = root[root[v]]
                v = root[v]
            return v
        pairs = [r for r in range(len(self.regions)) if len(self.regions[r]) == 2]
        for r in pairs:
            a, b = (find(v) for v in self.regions[r])
            root[a] = b
        part = np.array([find(v) for v in range(len(self.cardinalities))])
        variables = np.bincount(part, minlength=len(part))
        edges = np.bincount([part[self.regions[r][0]] for r in pairs], minlength=len(part))
        c = np.zeros(len(self.regions))
        for r in pairs:
            p = part[self.regions[r][0]]
            c[r] = (variables[p] - 1) / edges[p]
        for r in range(len(self.regions)):
            if len(self.regions[r]) == 1:
                c[r] = 1.0 - sum(c[p] for p in self.parents[r])
        return c

    def _check_solvable(self):
        c = self.counting_numbers
        for r, parents in enumerate(self.parents):
            if parents and abs(c[r] + sum(c[p] for p in parents)) < 1e-12:
                raise ValueError(
                    f"counting numbers make c_r + sum of parents' c zero for region {r} "
                    f"{self.regions[r]} (c_r = {c[r]:g}, parents {list(parents)}): "
                    "its block update is undefined")
        for r in self.belief_order():
            if c[r] <= 0 and self.belief_source(r) is None:
                raise ValueError(
                    f"region {r} {self.regions[r]} has counting number {c[r]:g} <= 0 and no parent "
                    "to read its belief from")

    def belief_source(self, r: int) -> int | None:
        """The parent whose belief region r's belief is marginalised from (when eps*c_r <= 0)."""
        if self.counting_numbers[r] > 0:
            return None
        for p in self.parents[r]:
            if self.counting_numbers[p] > 0 or self.belief_source(p) is not None:
                return p
        return None

    def belief_order(self) -> list[int]:
        """Regions ordered so that every belief source comes before the regions it serves."""
        return sorted(range(len(self.regions)), key=lambda r: -len(self.regions[r]))

    def check_potentials(self, potentials) -> list[np.ndarray]:
        """Validate a list of potential arrays against the regions; return float64 copies."""
        if len(potentials) != len(self.regions):
            raise ValueError(f"potentials: expected {len(self.regions)} arrays (one per region), "
                             f"got {len(potentials)}")
        out = []
        for k, (pot, shape) in enumerate(zip(potentials, self.shapes)):
            arr = np.asarray(pot, dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"potentials[{k}] has shape {arr.shape}, but region {k} "
                                 f"{self.regions[k]} needs shape {shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"potentials[{k}] contains NaN or inf")
            out.append(arr)
        return out

    def __repr__(self):
        return (f"RegionGraph({len(self.cardinalities)} variables, {len(self.regions)} regions, "
                f"{len(self.edges)} edges, {len(self.colours)} colours, eps={self.eps:g})")
