"""A mini-batch of samples as one flat region graph: the disjoint union, as index arrays.

Layout (the contract every inference backend shares, CPU or GPU):

* potentials: one flat float vector; sample s owns ``[potential_offset[s], potential_offset[s+1])``,
  inside it its regions in graph order, each region's table flattened in C order.
* messages: one flat vector; sample s owns ``[message_offset[s], message_offset[s+1])``, inside it
  one vector per edge (child -> parent) in graph edge order, as long as the child's state space.
  So a sample's messages can be stored and restored by sample id (warm start).
* the schedule: for every colour, the index arrays of its block updates, split into groups of equal
  shape so each group is one vectorised operation (or one kernel launch):

  - ``FastGroup``: the parent is a *fast pair* -- two variables, no parents, eps c_p > 0, both unary
    children listed; then
    ``mu_{p->r}(y_r) = eps c_p log sum_{y_o} exp((f_p(y_r, y_o) + lambda_{o->p}(y_o)) / (eps c_p))``
    is a matrix-vector product with the table ``exp(f_p / (eps c_p))``, which is constant while the
    potentials are: computed once per run, shared by both directions, the dual and the beliefs.
    ``PairGroup`` lists the fast pairs of one shape.
  - ``GenericGroup``: any other parent; ``mu`` is a log-sum-exp over the parent's entries grouped
    by child state, read from the reparameterised potential ``fhat_p``.

Each sample's part is computed once per (structure, counting numbers, eps) -- a *template* -- and
tiled over the samples that share it with array arithmetic: no Python loop runs over samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .region_graph import RegionGraph

INDEX = np.int64


@dataclass
class PairGroup:
    """Fast pairs p = (a, b) of one shape (n_a, n_b); f_p(y_a, y_b) is entry y_a * n_b + y_b."""

    entries: np.ndarray    # (P, n_a * n_b) potential index of the pair's table, C order
    message_a: np.ndarray  # (P, n_a) message index of lambda_{(a)->p}
    message_b: np.ndarray  # (P, n_b) message index of lambda_{(b)->p}
    scale: np.ndarray      # (P,) eps * c_p  (> 0)
    sample: np.ndarray     # (P,) the sample each pair belongs to


@dataclass
class FastGroup:
    """Edges r -> p into the fast pairs of one PairGroup (r on either side if the table is square)."""

    pair_group: int        # index into GraphBatch.pair_groups
    pairs: np.ndarray      # (E,) index of each edge's pair within that group
    transposed: np.ndarray  # (E,) bool: r is the pair's second variable, use the table's transpose
    own: np.ndarray        # (E, n_r) message index of lambda_{r->p}
    other: np.ndarray      # (E, n_o) message index of lambda_{o->p}
    scale: np.ndarray      # (E,) eps * c_p  (> 0)
    entries: slice         # this group's slice of the colour's edge entries


@dataclass
class GenericGroup:
    """Edges r -> p with equal (n_r, |Y_p| / n_r) and equal kind (log-sum-exp or max)."""

    grouped: np.ndarray    # (E, n_r, k) potential index of p's entries, grouped by child state
    own: np.ndarray        # (E, n_r) message index of lambda_{r->p}
    scale: np.ndarray      # (E,) eps * c_p
    use_max: bool          # eps * c_p == 0: max-product for these parents
    entries: slice


@dataclass
class ColourPlan:
    """Block updates of all regions of one colour (they read no message another one writes)."""

    region_entries: np.ndarray   # (Q,) potential index of every state of every region of the colour
    edge_entry_q: np.ndarray     # (K,) for each message entry of the colour: its region state in Q
    edge_entry_message: np.ndarray  # (K,) its message index
    edge_entry_ratio: np.ndarray    # (K,) c_p / (c_r + sum of parents' c)
    fast: list[FastGroup] = field(default_factory=list)
    generic: list[GenericGroup] = field(default_factory=list)
    # generic parents keep fhat current: fhat[parent_entry] += delta[parent_entry_source]
    parent_entry: np.ndarray = None
    parent_entry_source: np.ndarray = None
    childless: bool = True       # no region of the colour has children: sum_c lambda_{c->r} = 0


def _is_fast_parent(graph: RegionGraph, p: int) -> bool:
    children = graph.children[p]
    return (len(graph.regions[p]) == 2 and not graph.parents[p]
            and graph.counting_numbers[p] > 0 and len(children) == 2
            and all(len(graph.regions[c]) == 1 for c in children))


class _Template:
    """Sample-relative index arrays of one graph; the batch tiles them over its samples."""

    def __init__(self, graph: RegionGraph):
        self.graph = graph
        sizes = np.array(graph.sizes, dtype=INDEX)
        self.region_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(INDEX)
        self.num_potentials = int(sizes.sum())
        c = graph.counting_numbers
        self.scale = graph.eps * c
        edge_sizes = np.array([sizes[r] for r, _ in graph.edges], dtype=INDEX)
        # (a graph without edges has none: no start may point past its messages)
        self.edge_offset = np.cumsum(np.concatenate([[0], edge_sizes]))[:-1].astype(INDEX)
        self.num_messages = int(edge_sizes.sum())
        edge_of = {edge: e for e, edge in enumerate(graph.edges)}
        state = graph.structure.child_state
        range_of = lambda r: self.region_offset[r] + np.arange(sizes[r], dtype=INDEX)  # noqa: E731

        # fast pairs, by shape; their dual terms and beliefs come from the exp table
        self.fast = {p for p in range(len(graph.regions)) if _is_fast_parent(graph, p)}
        self.pairs: dict[tuple, list[int]] = {}
        for p in sorted(self.fast):
            self.pairs.setdefault((int(graph.cardinalities[graph.regions[p][0]]),
                                   int(graph.cardinalities[graph.regions[p][1]])), []).append(p)
        self.pair_slot = {p: j for members in self.pairs.values() for j, p in enumerate(members)}
        self.pair_arrays = {}
        for key, members in self.pairs.items():
            # the edges from the unary children of the pair's first and second variable
            side = [[edge_of[(c, p)] for v in graph.regions[p] for c in graph.children[p]
                     if graph.regions[c] == (v,)] for p in members]
            self.pair_arrays[key] = (
                np.stack([range_of(p) for p in members]),
                np.stack([self.edge_offset[a] + np.arange(key[0]) for a, _ in side]),
                np.stack([self.edge_offset[b] + np.arange(key[1]) for _, b in side]),
                self.scale[members])

        # every (edge, parent entry) of a non-fast parent: fhat_p += lambda_{r->p}(child state);
        # and every message entry: fhat_r -= lambda_{r->p}
        slow = [e for e, (_, p) in enumerate(graph.edges) if p not in self.fast]
        self.parent_entry = _cat([range_of(graph.edges[e][1]) for e in slow])
        self.parent_entry_message = _cat([self.edge_offset[e] + state[e] for e in slow])
        self.message_child_entry = _cat([range_of(r) for r, _ in graph.edges])

        # non-fast regions by size, for the dual and the beliefs
        self.by_size = {}
        for n in np.unique(sizes):
            members = np.array([r for r in np.flatnonzero(sizes == n) if r not in self.fast], INDEX)
            if len(members):
                self.by_size[int(n)] = (self.region_offset[members, None] + np.arange(n), members)

        # beliefs of regions with eps*c_r <= 0 are marginalised from a parent, larger regions first
        levels: dict[int, list] = {}
        depth = {}
        for r in graph.belief_order():
            p = graph.belief_source(r)
            if p is None:
                depth[r] = 0
                continue
            depth[r] = depth[p] + 1
            e = edge_of[(r, p)]
            levels.setdefault(depth[r], []).append((self.region_offset[r] + state[e], range_of(p)))
        self.belief_levels = [(_cat([d for d, _ in levels[k]]), _cat([s for _, s in levels[k]]))
                              for k in sorted(levels)]

        self.colours = [self._colour(regions, sizes, edge_of, range_of) for regions in graph.colours]

    def _colour(self, regions, sizes, edge_of, range_of):
        graph, state, c = self.graph, self.graph.structure.child_state, self.graph.counting_numbers
        q_offset = dict(zip(regions, np.concatenate([[0], np.cumsum(sizes[list(regions)])[:-1]])))
        plan = {"region_entries": _cat([range_of(r) for r in regions]),
                "childless": all(not graph.children[r] for r in regions)}
        groups: dict[tuple, list[int]] = {}
        for r in regions:
            for p in graph.parents[r]:
                e = edge_of[(r, p)]
                if p in self.fast:
                    pair_shape = tuple(graph.cardinalities[v] for v in graph.regions[p])
                    key = ("fast", int(sizes[r]), int(sizes[p] // sizes[r]), pair_shape)
                else:
                    key = ("generic", int(sizes[r]), int(sizes[p] // sizes[r]), bool(c[p] == 0))
                groups.setdefault(key, []).append(e)
        plan["groups"] = []
        ee_q, ee_msg, ee_ratio, parent_entry, parent_source = [], [], [], [], []
        position = 0
        for key in sorted(groups):
            edges = groups[key]
            arrays = {"own": np.stack([self.edge_offset[e] + np.arange(key[1]) for e in edges]),
                      "scale": np.array([self.scale[graph.edges[e][1]] for e in edges])}
            if key[0] == "fast":
                pairs, other, transposed = [], [], []
                for e in edges:
                    r, p = graph.edges[e]
                    (o,) = [k for k in graph.children[p] if k != r]
                    pairs.append(self.pair_slot[p])
                    other.append(self.edge_offset[edge_of[(o, p)]] + np.arange(sizes[o]))
                    transposed.append(graph.regions[p][1] == graph.regions[r][0])
                arrays.update(pairs=np.array(pairs, INDEX), other=np.stack(other),
                              transposed=np.array(transposed))
            else:
                grouped = [range_of(graph.edges[e][1])[np.argsort(state[e], kind="stable")]
                           .reshape(key[1], key[2]) for e in edges]
                arrays["grouped"] = np.stack(grouped)
                for j, e in enumerate(edges):
                    parent_entry.append(range_of(graph.edges[e][1]))
                    parent_source.append(position + j * key[1] + state[e])
            for e in edges:
                r, p = graph.edges[e]
                chat = c[r] + sum(c[q] for q in graph.parents[r])
                ee_q.append(q_offset[r] + np.arange(sizes[r]))
                ee_msg.append(self.edge_offset[e] + np.arange(sizes[r]))
                ee_ratio.append(np.full(sizes[r], c[p] / chat))
            plan["groups"].append((key, len(edges), position, arrays))
            position += len(edges) * key[1]
        plan.update(edge_entry_q=_cat(ee_q), edge_entry_message=_cat(ee_msg),
                    edge_entry_ratio=_cat(ee_ratio, np.float64),
                    parent_entry=_cat(parent_entry), parent_entry_source=_cat(parent_source),
                    num_region_entries=int(sum(sizes[r] for r in regions)),
                    num_edge_entries=position)
        return plan


def _cat(arrays, dtype=INDEX) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if len(arrays) else np.zeros(0, dtype)


_TEMPLATES: dict[tuple, _Template] = {}
_MAX_TEMPLATES = 1024


def _template_for(graph: RegionGraph) -> _Template:
    # the template keeps its graph (and so the structure) alive, so id() stays a valid key
    key = (id(graph.structure), graph.counting_numbers.tobytes(), graph.eps)
    template = _TEMPLATES.get(key)
    if template is None:
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        template = _TEMPLATES[key] = _Template(graph)
    return template


def _tile(relative: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Stack `relative + offset` for every offset: (n, *shape) flattened to (n * len, ...)."""
    shifted = relative[None] + offsets.reshape((-1,) + (1,) * relative.ndim)
    return shifted.reshape((-1,) + relative.shape[1:])


class GraphBatch:
    """The disjoint union of the graphs of a mini-batch, flattened to index arrays.

    Graphs may differ (words of different lengths); graphs built with the same structure, counting
    numbers and eps share one cached template.
    """

    def __init__(self, graphs: list[RegionGraph]):
        if not graphs:
            raise ValueError("GraphBatch: the batch is empty")
        self.graphs = list(graphs)
        templates = [_template_for(g) for g in self.graphs]
        self.num_samples = len(templates)
        self.potential_offset = np.concatenate(
            [[0], np.cumsum([t.num_potentials for t in templates])]).astype(INDEX)
        self.message_offset = np.concatenate(
            [[0], np.cumsum([t.num_messages for t in templates])]).astype(INDEX)
        self.num_potentials = int(self.potential_offset[-1])
        self.num_messages = int(self.message_offset[-1])

        # samples grouped by template; each group is tiled with array arithmetic
        by_template: dict[int, tuple[_Template, list[int]]] = {}
        for s, t in enumerate(templates):
            by_template.setdefault(id(t), (t, []))[1].append(s)
        self._parts = [(t, np.array(ss, INDEX)) for t, ss in by_template.values()]

        pot = lambda ss: self.potential_offset[ss]  # noqa: E731
        msg = lambda ss: self.message_offset[ss]    # noqa: E731
        self.parent_entry = self._join(lambda t, ss: _tile(t.parent_entry, pot(ss)))
        self.parent_entry_message = self._join(lambda t, ss: _tile(t.parent_entry_message, msg(ss)))
        # in message order (templates interleave in the batch, so place each part where it belongs)
        self.message_child_entry = np.empty(self.num_messages, INDEX)
        for t, ss in self._parts:
            self.message_child_entry[_tile(np.arange(t.num_messages), msg(ss))] = \
                _tile(t.message_child_entry, pot(ss))

        # (entries (R, n), eps*c (R,), sample (R,)) per region size
        self.regions_by_size = []
        for n in sorted({n for t, _ in self._parts for n in t.by_size}):
            parts = [(t.by_size[n], t, ss) for t, ss in self._parts if n in t.by_size]
            self.regions_by_size.append((
                np.concatenate([_tile(idx, pot(ss)) for (idx, _), _, ss in parts]),
                np.concatenate([np.tile(t.scale[m], len(ss)) for (_, m), t, ss in parts]),
                np.concatenate([np.repeat(ss, len(m)) for (_, m), _, ss in parts])))
        depth = max((len(t.belief_levels) for t, _ in self._parts), default=0)
        self.belief_levels = []
        for k in range(depth):
            parts = [(t.belief_levels[k], ss) for t, ss in self._parts if k < len(t.belief_levels)]
            self.belief_levels.append((
                np.concatenate([_tile(dst, pot(ss)) for (dst, _), ss in parts]),
                np.concatenate([_tile(src, pot(ss)) for (_, src), ss in parts])))
        # fast pairs of one shape, concatenated over templates; remember where each template starts
        self.pair_groups: list[PairGroup] = []
        self._pair_base: dict[tuple, tuple[int, int]] = {}   # (template id, shape) -> (group, base)
        for key in sorted({key for t, _ in self._parts for key in t.pairs}):
            parts = [(t.pair_arrays[key], t, ss) for t, ss in self._parts if key in t.pairs]
            base = 0
            for (entries, _, _, _), t, ss in parts:
                self._pair_base[(id(t), key)] = (len(self.pair_groups), base)
                base += len(entries) * len(ss)
            self.pair_groups.append(PairGroup(
                entries=np.concatenate([_tile(a[0], pot(ss)) for a, _, ss in parts]),
                message_a=np.concatenate([_tile(a[1], msg(ss)) for a, _, ss in parts]),
                message_b=np.concatenate([_tile(a[2], msg(ss)) for a, _, ss in parts]),
                scale=np.concatenate([np.tile(a[3], len(ss)) for a, _, ss in parts]),
                sample=np.concatenate([np.repeat(ss, len(a[0])) for a, _, ss in parts])))
        num_colours = max(len(t.colours) for t, _ in self._parts)
        self.colours = [self._colour(k) for k in range(num_colours)]

    def _join(self, tiled) -> np.ndarray:
        return np.concatenate([tiled(t, ss) for t, ss in self._parts])

    @property
    def template(self):
        """The one RegionGraph every sample is built like (same structure, counting numbers and
        eps), or None: then sample s's potentials are entries [s P, (s + 1) P) of the batch's
        (P = its potential count), and its messages likewise."""
        return self._parts[0][0].graph if len(self._parts) == 1 else None

    @property
    def message_edge_start(self) -> np.ndarray:
        """Start of every edge's message vector (for per-edge reductions)."""
        return np.sort(self._join(lambda t, ss: _tile(t.edge_offset, self.message_offset[ss])))

    def _colour(self, k: int) -> ColourPlan:
        parts = [(t.colours[k], t, ss) for t, ss in self._parts if k < len(t.colours)]
        pot = lambda ss: self.potential_offset[ss]  # noqa: E731
        msg = lambda ss: self.message_offset[ss]    # noqa: E731
        # where each (template, sample) starts in the colour's region entries
        q_start, q_base = [], 0
        for plan, _, ss in parts:
            q_start.append(q_base + plan["num_region_entries"] * np.arange(len(ss)))
            q_base += plan["num_region_entries"] * len(ss)

        colour = ColourPlan(
            region_entries=np.concatenate([_tile(p["region_entries"], pot(ss)) for p, _, ss in parts]),
            edge_entry_q=None, edge_entry_message=None, edge_entry_ratio=None,
            childless=all(p["childless"] for p, _, _ in parts))
        # edge entries ordered by group key, then template, then sample
        keys = sorted({g[0] for p, _, _ in parts for g in p["groups"]})
        ee_q, ee_msg, ee_ratio, parent_entry, parent_source = [], [], [], [], []
        position = 0
        for key in keys:
            start, members = position, []
            for (plan, t, ss), qs in zip(parts, q_start):
                for gkey, num_edges, gpos, arrays in plan["groups"]:
                    if gkey != key:
                        continue
                    width = num_edges * key[1]
                    sl = slice(gpos, gpos + width)
                    ee_q.append(_tile(plan["edge_entry_q"][sl], qs))
                    ee_msg.append(_tile(plan["edge_entry_message"][sl], msg(ss)))
                    ee_ratio.append(np.tile(plan["edge_entry_ratio"][sl], len(ss)))
                    if key[0] == "generic":
                        sel = (plan["parent_entry_source"] >= gpos) & (plan["parent_entry_source"] < gpos + width)
                        parent_entry.append(_tile(plan["parent_entry"][sel], pot(ss)))
                        parent_source.append(_tile(plan["parent_entry_source"][sel] - gpos,
                                                   position + width * np.arange(len(ss))))
                    members.append((arrays, t, ss))
                    position += width * len(ss)
            entries = slice(start, position)
            own = np.concatenate([_tile(a["own"], msg(ss)) for a, _, ss in members])
            scale = np.concatenate([np.tile(a["scale"], len(ss)) for a, _, ss in members])
            if key[0] == "fast":
                shape = key[3]
                pairs = []
                for a, t, ss in members:
                    group, base = self._pair_base[(id(t), shape)]
                    pairs.append(_tile(a["pairs"], base + len(t.pairs[shape]) * np.arange(len(ss))))
                colour.fast.append(FastGroup(
                    pair_group=group, pairs=np.concatenate(pairs),
                    transposed=np.concatenate([np.tile(a["transposed"], len(ss))
                                               for a, _, ss in members]),
                    own=own, scale=scale, entries=entries,
                    other=np.concatenate([_tile(a["other"], msg(ss)) for a, _, ss in members])))
            else:
                colour.generic.append(GenericGroup(
                    grouped=np.concatenate([_tile(a["grouped"], pot(ss)) for a, _, ss in members]),
                    own=own, scale=scale, use_max=key[3], entries=entries))
        colour.edge_entry_q = _cat(ee_q)
        colour.edge_entry_message = _cat(ee_msg)
        colour.edge_entry_ratio = _cat(ee_ratio, np.float64)
        colour.parent_entry = _cat(parent_entry)
        colour.parent_entry_source = _cat(parent_source)
        return colour

    # --- conversions between per-sample lists of arrays and the flat layout -------------------
    def pack(self, potentials_per_sample) -> np.ndarray:
        """Flatten [[array per region] per sample] into the batch's potential vector (float64)."""
        if len(potentials_per_sample) != self.num_samples:
            raise ValueError(f"pack: expected potentials for {self.num_samples} samples, "
                             f"got {len(potentials_per_sample)}")
        flat = [np.ravel(p) for graph, pots in zip(self.graphs, potentials_per_sample)
                for p in graph.check_potentials(pots)]
        return np.concatenate(flat)

    def unpack(self, flat: np.ndarray) -> list[list[np.ndarray]]:
        """Split a potential-shaped vector (e.g. beliefs) into [[array per region] per sample]."""
        out = []
        for s, graph in enumerate(self.graphs):
            chunk, pos, regions = flat[self.potential_offset[s]:self.potential_offset[s + 1]], 0, []
            for shape, size in zip(graph.shapes, graph.sizes):
                regions.append(chunk[pos:pos + size].reshape(shape))
                pos += size
            out.append(regions)
        return out
