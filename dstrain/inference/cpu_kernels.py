"""The CPU engine's compiled kernels (``cpu_kernels.c``): one pass over a pair group's tables
at the start of a run (the exp tables) and at its read-out (the beliefs), each pair given by the
offset of its first entry in a contiguous buffer, and a sweep's products of those tables with
the other variables' weights (FlatBP); and the dense binary engine's start, sweep, read-outs and
messages (DenseBP).

Built on first use with the C compiler ``$CC`` (default ``cc``) and cached (dstrain.native);
ctypes releases the GIL during a call, so the engine's ranges run them in parallel threads.
Where no compiler works, or with ``DSTRAIN_CPU_KERNELS=0``, ``library()`` is None and the engine
runs its numpy path for these steps instead (same formulas; the last bits of an exp or a log
may differ), after one warning.  ``dstrain info`` says which.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import numpy as np

from ..native import BuildError, shared_library

SOURCE = Path(__file__).with_name("cpu_kernels.c")
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "zeros_streamed": [_P, _I],
    "pair_tables": [_P, _P, _P, _P, _I, _I, _P, ctypes.c_int, _D, _D, _D, _P, _P, ctypes.c_int],
    "pair_beliefs": [_P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P],
    "edge_products": [_P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _I, _P],
    "colour_update": [_P, _P, _P, _P, _I, _I, _P, _I, _P, ctypes.c_int, _P],
    "pair_weights": [_P, _P, _P, _I, _I, _I, _P, _P, _P],
    "row_dots": [_P, _P, _P, _P, _I, _I, _P],
    "pair_readout": [_P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I,
                     ctypes.c_int, _P],
    "region_values": [_P, _I, _P, _P, _I, _P, _P, _I, _P, _P],
    "row_softmax": [_P, _I, _I, _P, _P, _P, _P],
    "region_readout": [_P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _I, _P],
    "dense_start": [_P, _I, _I, _I, _I, _I, _P, _P, _P, _I, _P, _P, _P, _I, _P, _P, _P, _P, _P,
                    _P, _I, _P],
    "dense_sweep": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _P, _I, ctypes.c_int, _P],
    "dense_pairs": [_P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _I, _I,
                    _P],
    "dense_unaries": [_P, _P, _P, _I, _I, _I, _I, _P, _P, _I, _P, _P],
    "dense_messages": [_P, _P, _I, _I, _P, _I, _P, _I, _P],
}
_RETURNS = {"edge_products": ctypes.c_double, "colour_update": ctypes.c_double,
            "dense_start": ctypes.c_double, "dense_pairs": ctypes.c_int,
            "dense_sweep": ctypes.c_double}


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("DSTRAIN_CPU_KERNELS", "1") == "0":
        return None, "turned off (DSTRAIN_CPU_KERNELS=0)"
    compiler = os.environ.get("CC", "cc")
    command = [compiler, "-std=c11", "-O3", "-fno-math-errno", "-shared", "-fPIC", str(SOURCE),
               "-o", "{out}", "-lm"]
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        command.insert(-1, "-lmvec")
    try:
        library = shared_library("cpu", SOURCE.stem, [SOURCE], command)
    except (BuildError, OSError) as error:
        return None, f"not built ({error}): the numpy path runs instead"
    for name, argtypes in _SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = _RETURNS.get(name)
    return library, f"built with {compiler}: {library._name}"


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (then warns once, saying why)."""
    loaded, why = _load()
    if loaded is None:
        _warn_once(why)
    return loaded


def status() -> str:
    return _load()[1]


@functools.lru_cache(maxsize=None)
def _warn_once(why: str) -> None:
    if why.startswith("not built"):
        import warnings
        warnings.warn(f"dstrain's CPU kernels are {why}", RuntimeWarning, stacklevel=3)


def _buffer(array: np.ndarray, name: str, rows: int | None = None, width: int | None = None):
    """The address of a C-contiguous float64 array (of `rows` rows of `width` if given)."""
    if array.dtype != np.float64 or not array.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous float64 array, got {array.dtype} "
                         f"with strides {array.strides}")
    if rows is not None and array.size != rows * width:
        raise ValueError(f"{name}: expected {rows} x {width} entries, got shape {array.shape}")
    return array.ctypes.data


class Indices(np.ndarray):
    """A read-only int64 copy of index arrays that a kernel takes every call (offsets, positions,
    orders), its smallest and largest entry found once here: a call then checks its bounds in
    O(1) instead of scanning the batch's edges again.  Use it as any array: results of arithmetic
    are plain arrays, and a view of it is checked per call."""

    def __new__(cls, values):
        array = np.array(values, dtype=np.int64).view(cls)
        array.setflags(write=False)
        array.bounds = (int(array.min()), int(array.max())) if array.size else None
        return array

    def __array_finalize__(self, obj):
        self.bounds = None   # (views: other entries; Indices.__new__ sets its own)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        """Results of ufuncs and reductions as plain arrays and scalars."""
        array = np.asarray(array)
        return array[()] if return_scalar else array


def _bounds(indices: np.ndarray, name: str) -> tuple[int, int] | None:
    """(smallest, largest) of contiguous int64 `indices` (cached for an Indices), None if empty."""
    if indices.dtype != np.int64 or not indices.flags.c_contiguous:
        raise ValueError(f"{name}: expected contiguous int64 indices")
    if not indices.size:
        return None
    bounds = getattr(indices, "bounds", None)   # (an Indices' own)
    if bounds is not None:
        return bounds
    return int(indices.min()), int(indices.max())


def _offsets(offsets: np.ndarray, size: int, buffer: np.ndarray, name: str) -> int:
    """The address of int64 `offsets` of runs of `size` entries that all lie in `buffer` (the
    kernels write through them: checked, not trusted)."""
    bounds = _bounds(offsets, name)
    if bounds is not None and (bounds[0] < 0 or bounds[1] + size > buffer.size):
        raise ValueError(f"{name}: offsets outside the {buffer.size} entries given")
    return offsets.ctypes.data


def _order(order, pairs: int):
    """The address of `order`, the pairs' indices in the order to take them (a permutation; only
    their range is checked, what the kernels index with), or None (then in order)."""
    if order is None:
        return None
    if order.dtype != np.int64 or not order.flags.c_contiguous or len(order) != pairs:
        raise ValueError(f"order: expected {pairs} contiguous int64 pair indices")
    return _positions(order, pairs, "order")


def pair_tables(kernels, potentials, potential_at, tables, table_at, size: int, scale,
                one_scale: bool, top, above: float, below: float, order=None,
                streamed: bool = False) -> None:
    """For each pair k: the `size` entries of `tables` from table_at[k] = exp(f / scale[k]), f the
    entries of `potentials` from potential_at[k], or exp((f - max f) / scale[k]) where the max f /
    scale[k] lies outside [-below, above] (its max into top[k], else 0 there); with `one_scale` a
    multiplication by 1 / scale[0] instead of the divisions.  `order`: the order to take the
    pairs in (a permutation; the results do not depend on it), default as given.  `streamed`:
    the tables written with streaming stores, where the CPU has them (the same bits)."""
    pairs = len(potential_at)
    if not len(table_at) == len(scale) == len(top) == pairs:
        raise ValueError("pair_tables: offsets, scales and tops of different lengths")
    kernels.pair_tables(_buffer(potentials, "potentials"),
                        _offsets(potential_at, size, potentials, "potential_at"),
                        _buffer(tables, "tables"), _offsets(table_at, size, tables, "table_at"),
                        pairs, size, _buffer(scale, "scale"), int(one_scale),
                        1.0 / scale[0] if pairs else 1.0, above, below, _buffer(top, "top"),
                        _order(order, pairs), int(streamed))


def pair_beliefs(kernels, tables, table_at, beliefs, belief_at, n_a: int, n_b: int, w_a, w_b,
                 sums, order=None) -> None:
    """For each pair k: the n_a x n_b entries of `beliefs` from belief_at[k] = its table (from
    table_at[k]) times (w_a[k] / sums[k]) w_b[k]^T; w_a (pairs, n_a), w_b (pairs, n_b); `order`
    as for pair_tables."""
    pairs, size = len(table_at), n_a * n_b
    if not len(belief_at) == len(sums) == pairs:
        raise ValueError("pair_beliefs: offsets and sums of different lengths")
    kernels.pair_beliefs(_buffer(tables, "tables"), _offsets(table_at, size, tables, "table_at"),
                         _buffer(beliefs, "beliefs"),
                         _offsets(belief_at, size, beliefs, "belief_at"), pairs, n_a, n_b,
                         _buffer(w_a, "w_a", pairs, n_a), _buffer(w_b, "w_b", pairs, n_b),
                         _buffer(sums, "sums", pairs, 1), _order(order, pairs))


def edge_products(kernels, lam, other_at, tables, table_at, second, n_a: int, n_b: int, scale,
                  order, total, mu) -> float:
    """FlatBP._fast_mu's products of one fast group: for edge e, its table (n_a x n_b, from
    table_at[e] of `tables`) times the weights exp(lam[other_at[e]:][:n_o] / scale[e]) (from the
    left where second[e]: r is the pair's second variable) into total (E, n_r), and scale[e]
    log(total) into mu (E, n_r); scale None: all 1; `order` as for pair_tables.  Returns the
    smallest total."""
    edges = len(other_at)
    if not len(table_at) == len(second) == edges or (scale is not None and len(scale) != edges):
        raise ValueError("edge_products: offsets, sides and scales of different lengths")
    sides = _bounds(second, "second")
    if sides is not None and sides[0] != sides[1] and n_a != n_b:
        raise ValueError("edge_products: both sides of a table that is not square")
    n_r = n_b if sides is not None and second[0] else n_a
    n_o = n_a + n_b - n_r
    chunk = max(1, 2048 // (n_a + n_b))
    work = np.empty(chunk * (n_a + n_b))   # (held here: the kernel writes into it)
    return kernels.edge_products(
        _buffer(lam, "lam"), _offsets(other_at, n_o, lam, "other_at"), _buffer(tables, "tables"),
        _offsets(table_at, n_a * n_b, tables, "table_at"), _positions(second, 2, "second"), edges,
        n_a, n_b, None if scale is None else _buffer(scale, "scale", edges, 1),
        _buffer(total, "total", edges, n_r), _buffer(mu, "mu", edges, n_r),
        _order(order, edges), chunk,
        _buffer(work, "work", chunk, n_a + n_b))


def pair_weights(kernels, lam, a_at, b_at, n_a: int, n_b: int, scale, w_a, w_b) -> None:
    """A pair group's read-out weights w_a = exp(lam[a_at[p]:][:n_a] / scale[p]) (pairs, n_a)
    and w_b likewise from b_at (pairs, n_b); scale None: all 1."""
    pairs = len(a_at)
    if len(b_at) != pairs or (scale is not None and len(scale) != pairs):
        raise ValueError("pair_weights: starts and scales of different lengths")
    kernels.pair_weights(_buffer(lam, "lam"), _offsets(a_at, n_a, lam, "a_at"),
                         _offsets(b_at, n_b, lam, "b_at"), pairs, n_a, n_b,
                         None if scale is None else _buffer(scale, "scale", pairs, 1),
                         _buffer(w_a, "w_a", pairs, n_a), _buffer(w_b, "w_b", pairs, n_b))


def row_dots(kernels, products, edges, w, at, total) -> None:
    """total[at[m]] = products[edges[m]] . w[at[m]] (rows of n, summed left to right)."""
    n = products.shape[1] if products.ndim == 2 else 0
    if products.ndim != 2 or w.ndim != 2 or w.shape[1] != n or len(edges) != len(at):
        raise ValueError(f"row_dots: rows of {products.shape} and {w.shape}, {len(edges)} edges "
                         f"for {len(at)} sums")
    kernels.row_dots(_buffer(products, "products"), _positions(edges, len(products), "edges"),
                     _buffer(w, "w"), _positions(at, min(len(w), len(total)), "at"), len(at), n,
                     _buffer(total, "total"))


class PairReadout:
    """pair_readout's per-pair arrays of one pair group, checked once and kept as read-only
    copies: each pair's source (which of the products arrays given per call holds its row),
    its row there, and whether r is its second variable; per source, its rows' width and the
    rows it must have."""

    def __init__(self, source, edge, second, n_a: int, n_b: int):
        if not len(source) == len(edge) == len(second):
            raise ValueError("pair_readout: sources, rows and sides of different lengths")
        self.source, self.edge, self.second = (np.array(a, dtype=np.int64)
                                               for a in (source, edge, second))
        sources = int(self.source.max()) + 1 if len(self.source) else 0
        if len(self.source) and (self.source.min() < 0 or self.edge.min() < 0
                                 or not np.isin(self.second, (0, 1)).all()):
            raise ValueError("pair_readout: negative sources or rows, or sides not 0 or 1")
        self.width, self.rows = np.zeros(sources, np.int64), np.zeros(sources, np.int64)
        for m in range(sources):
            mine = self.source == m
            sides = np.unique(self.second[mine])
            if len(sides) != 1:   # (a source's rows are all of r's size: one side each)
                raise ValueError(f"pair_readout: source {m} holds rows of both sides")
            self.width[m] = n_b if sides[0] else n_a
            self.rows[m] = self.edge[mine].max() + 1
        for a in (self.source, self.edge, self.second, self.width, self.rows):
            a.setflags(write=False)
        self.n_a, self.n_b = n_a, n_b


def pair_readout(kernels, plan: PairReadout, lam, a_at, b_at, scale, products, tables,
                 table_at, beliefs, belief_at, order, total, streamed: bool = False) -> None:
    """A pair group's read-out in one pass (pair_weights, row_dots and pair_beliefs in one):
    the sums into total from the last sweep's `products` (one array per source of `plan`),
    the beliefs into `beliefs` at belief_at (the weights stay in the kernel); `streamed`: the
    beliefs written with streaming stores, where the CPU has them (the same bits)."""
    pairs, n_a, n_b = len(plan.source), plan.n_a, plan.n_b
    if not len(a_at) == len(b_at) == len(table_at) == len(belief_at) == pairs \
            or (scale is not None and len(scale) != pairs) or len(products) != len(plan.rows):
        raise ValueError("pair_readout: offsets, scales or products of other lengths")
    for m, (array, width, rows) in enumerate(zip(products, plan.width, plan.rows)):
        if array.ndim != 2 or array.shape[1] != width or len(array) < rows:
            raise ValueError(f"pair_readout: products {m} of shape {array.shape}, expected at "
                             f"least {rows} rows of {width}")
        _buffer(array, f"products {m}")
    addresses = np.array([array.ctypes.data for array in products], dtype=np.uintp)
    chunk = max(1, 2048 // (n_a + n_b))
    work = np.empty(chunk * (n_a + n_b) + n_a * n_b)   # (held here: the kernel writes into it)
    kernels.pair_readout(
        _buffer(lam, "lam"), _offsets(a_at, n_a, lam, "a_at"), _offsets(b_at, n_b, lam, "b_at"),
        None if scale is None else _buffer(scale, "scale", pairs, 1), pairs, n_a, n_b,
        addresses.ctypes.data, plan.source.ctypes.data, plan.edge.ctypes.data,
        plan.second.ctypes.data, _buffer(tables, "tables"),
        _offsets(table_at, n_a * n_b, tables, "table_at"), _buffer(beliefs, "beliefs"),
        _offsets(belief_at, n_a * n_b, beliefs, "belief_at"), _order(order, pairs),
        _buffer(total, "total", pairs, 1), chunk, int(streamed), work.ctypes.data)


class RegionSums:
    """region_values' index arrays, checked once and kept as read-only copies: for k read-out
    entries, each parent message entry's entry (parent_at) and message (parent_message), and
    each message entry's child entry (child_at), over `messages` message entries."""

    def __init__(self, k: int, parent_at, parent_message, child_at, messages: int):
        if len(parent_at) != len(parent_message) or len(child_at) != messages:
            raise ValueError(f"region_values: {len(parent_at)} parent entries for "
                             f"{len(parent_message)} messages, {len(child_at)} child entries "
                             f"for {messages}")
        self.parent_at, self.parent_message, self.child_at = (
            np.array(a, dtype=np.int64) for a in (parent_at, parent_message, child_at))
        for a in (self.parent_at, self.parent_message, self.child_at):
            a.setflags(write=False)
        self._parent_at = _positions(self.parent_at, k, "parent_at")
        self._parent_message = _positions(self.parent_message, messages, "parent_message")
        self._child_at = _positions(self.child_at, k, "child_at")
        self.k, self.messages = k, messages


def region_values(kernels, plan: RegionSums, readout, lam, out) -> None:
    """out = (readout + the parents' message sums) - the children's message sums, per read-out
    entry (sums in np.bincount's order)."""
    work = np.empty(plan.k)   # (held here: the kernel writes into it)
    kernels.region_values(_buffer(readout, "readout", plan.k, 1), plan.k, plan._parent_at,
                          plan._parent_message, len(plan.parent_at), plan._child_at,
                          _buffer(lam, "lam", plan.messages, 1), plan.messages,
                          _buffer(out, "out", plan.k, 1), work.ctypes.data)


class RegionReadout:
    """region_readout's runs of one block of `rows` read-out regions of n entries with no parent
    messages, from RegionSums' arrays, checked once and kept as read-only copies: each region's
    child messages as the first entries of runs of n (entry j of the region reads entry j of
    each), a CSR list over the regions in np.bincount's order.  Build with `of`, which gives
    None where some region has parent messages or its child messages do not form such runs."""

    def __init__(self, first: int, rows: int, n: int, start, run, messages: int):
        self.first, self.rows, self.n, self.messages = first, rows, n, messages
        self.start, self.run = (np.ascontiguousarray(a, dtype=np.int64) for a in (start, run))
        for a in (self.start, self.run):
            a.setflags(write=False)
        if len(self.start) != rows + 1 or self.start[0] != 0 or self.start[-1] != len(self.run) \
                or np.any(np.diff(self.start) < 0):
            raise ValueError(f"region_readout: child lists that do not cover {rows} regions")
        _positions(self.run, max(messages - n + 1, 0), "child runs")

    @classmethod
    def of(cls, sums: RegionSums, first: int, rows: int, n: int) -> "RegionReadout | None":
        """The runs of read-out entries first .. first + rows n, or None."""
        last = first + rows * n
        if np.any((sums.parent_at >= first) & (sums.parent_at < last)):
            return None
        at = sums.child_at
        mine = np.flatnonzero((at >= first) & (at < last))
        heads = mine[(at[mine] - first) % n == 0]
        steps = heads[:, None] + np.arange(n)
        if len(mine) != len(heads) * n or (len(heads) and steps[:, -1].max() >= len(at)) \
                or not np.array_equal(at[steps], at[heads][:, None] + np.arange(n)):
            return None
        region = (at[heads] - first) // n   # (heads ascend: each region's runs in e's order)
        order = np.argsort(region, kind="stable")
        return cls(first, rows, n, np.searchsorted(region[order], np.arange(rows + 1)),
                   heads[order], sums.messages)


def zeros_streamed(kernels, out: np.ndarray) -> None:
    """out[:] = 0 with streaming stores where the CPU has them (see cpu_kernels.c)."""
    kernels.zeros_streamed(_buffer(out, "out"), out.size)


def region_readout(kernels, plan: RegionReadout, readout, lam, scale, beliefs, belief_at,
                   log_partition) -> None:
    """The read-out of plan's regions (region_values, row_softmax and the beliefs' copy in one
    pass): their beliefs into `beliefs` from belief_at[r], their log partitions into
    log_partition; `readout` the read-out entries' f (all of them); scale None: all 1."""
    rows, n = plan.rows, plan.n
    if len(belief_at) != rows or readout.size < plan.first + rows * n:
        raise ValueError(f"region_readout: {len(belief_at)} offsets for {rows} regions, "
                         f"{readout.size} read-out entries for {plan.first + rows * n}")
    chunk = max(1, 2048 // max(n, 1))
    work = np.empty(chunk * (n + 2))   # (held here: the kernel writes into it)
    if rows and n:
        kernels.region_readout(
            _buffer(readout, "readout") + 8 * plan.first, rows, n, plan.start.ctypes.data,
            plan.run.ctypes.data, _buffer(lam, "lam", plan.messages, 1),
            None if scale is None else _buffer(scale, "scale", rows, 1),
            _buffer(beliefs, "beliefs"), _offsets(belief_at, n, beliefs, "belief_at"),
            _buffer(log_partition, "log_partition", rows, 1), chunk, work.ctypes.data)


def row_softmax(kernels, values, scale):
    """(beliefs, log partitions) of rows of values (rows, n): softmax of values / scale (scale
    None: all 1) and scale (max + log sum exp) per row."""
    if values.ndim != 2 or (scale is not None and len(scale) != len(values)):
        raise ValueError(f"row_softmax: values of shape {values.shape}, scales for "
                         f"{'all' if scale is None else len(scale)}")
    rows, n = values.shape
    beliefs, log_partition, work = np.empty((rows, n)), np.empty(rows), np.empty(rows)
    if rows and n:
        kernels.row_softmax(_buffer(values, "values", rows, n), rows, n,
                            None if scale is None else _buffer(scale, "scale", rows, 1),
                            beliefs.ctypes.data, log_partition.ctypes.data, work.ctypes.data)
    return beliefs, log_partition


class ColourUpdate:
    """colour_update's index arrays for one colour of `rows` messages of n entries, checked once
    here and kept as read-only copies (a sweep then checks only the arrays it passes): each
    entry's region state q (< num_q), its ratio and its message's index in lam (< messages)."""

    def __init__(self, q, ratio, message_at, rows: int, n: int, num_q: int, messages: int):
        entries = rows * n
        if not len(q) == len(ratio) == len(message_at) == entries:
            raise ValueError(f"colour_update: {len(q)}, {len(ratio)} and {len(message_at)} "
                             f"entries given for {rows} messages of {n}")
        self.q, self.message_at = (np.array(a, dtype=np.int64) for a in (q, message_at))
        self.ratio = np.array(ratio, dtype=np.float64)
        for a in (self.q, self.message_at, self.ratio):
            a.setflags(write=False)
        self._q = _positions(self.q, num_q, "q")
        self._message_at = _positions(self.message_at, messages, "message_at")
        self.rows, self.n, self.num_q, self.messages = rows, n, num_q, messages


def colour_update(kernels, plan: ColourUpdate, mu, inner, lam, change: bool) -> float:
    """The end of FlatBP.update_colour for one fast group on childless regions: totals per
    region state (inner + the sum of mu over its entries), the new messages (ratio total - mu,
    each less its largest) into lam; the largest change of an entry if `change`, else 0."""
    work = np.empty(plan.num_q + plan.n)   # (held here: the kernel writes into it)
    return kernels.colour_update(
        _buffer(mu, "mu", plan.rows, plan.n), plan._q, plan.ratio.ctypes.data, plan._message_at,
        plan.rows, plan.n, _buffer(inner, "inner", plan.num_q, 1), plan.num_q,
        _buffer(lam, "lam", plan.messages, 1), int(change), work.ctypes.data)


def _positions(positions: np.ndarray, limit: int, name: str, lowest: int = 0) -> int:
    """The address of int64 `positions`, each in [lowest, limit) (checked: the kernels index by
    them; -1, where allowed, stands for none)."""
    bounds = _bounds(positions, name)
    if bounds is not None and (bounds[0] < lowest or bounds[1] >= limit):
        raise ValueError(f"{name}: positions outside [{lowest}, {limit})")
    return positions.ctypes.data


def _columns(samples: int, width: int, name: str) -> None:
    if samples > width:
        raise ValueError(f"{name}: {samples} samples in {width} columns")


def _chunk(width: int) -> int:
    """Pairs (or edges) per block of the dense kernels' transposed copies: a (chunk, width) block
    of scratch of about 16 KB, so that a few of them stay in the L1 and L2 caches."""
    return max(1, min(64, 2048 // width))


class DenseRun:
    """The dense kernels' arguments of one DenseBP run on a range of samples, checked once at its
    start and kept as addresses (a sweep then passes only what changes): the plan's index and
    coefficient arrays, the run's arrays of DenseState (rows (2, P + 1, width) w and E,
    pair_constant (width,), minus_k and H (V V, width), inner (V, width)) and `scratch`, every
    kernel's work space in turn (at least DenseRun.scratch_rows(plan, width) rows of width)."""

    def __init__(self, plan, rows, pair_constant, minus_k, H, inner, scratch):
        V, P = plan.V, plan.P
        width = pair_constant.shape[0]
        square = (V * V, width)
        self.plan, self.width, self.chunk = plan, width, _chunk(width)
        self._arrays = (rows, pair_constant, minus_k, H, inner, scratch)   # (kept alive)
        self.w, self.E = _buffer(rows[0], "w", P + 1, width), _buffer(rows[1], "E", P + 1, width)
        self.pair_constant = _buffer(pair_constant, "pair_constant", width, 1)
        self.minus_k, self.H = _buffer(minus_k, "minus_k", *square), _buffer(H, "H", *square)
        self.inner = _buffer(inner, "inner", V, width)
        self.scratch = _buffer(scratch, "scratch", self.scratch_rows(plan, width), width)
        self.at_u, self.at_v = (_positions(a, V * V, name)
                                for a, name in ((plan.first, "at_u"), (plan.second, "at_v")))
        self.empty = _positions(plan.empty, V * V, "empty")
        self.edge_at = _positions(plan.edges, V * V, "edge_at")
        self.pair_of = _positions(plan.symmetric, P + 1, "pair_of")
        self.source_u, self.source_v = (_positions(a, V, name, -1) for a, name in (
            (plan.source_u, "source_u"), (plan.source_v, "source_v")))
        # 1 / (eps c_p) and eps c_p, P + 1 of them (1 for the zero row P; the first P: the
        # pairs'), or None where all are 1
        self.inverse = None if plan.unit else _buffer(plan.pair_inverse, "inverse", P + 1, 1)
        self.scale = None if plan.unit else _buffer(plan.pair_scale, "scale", P + 1, 1)
        self.ratio = _buffer(plan.ratio, "ratio", V * V, 1)
        self.unary_scale = _buffer(plan.unary_scale, "unary_scale", V, 1)

    @staticmethod
    def scratch_rows(plan, width: int) -> int:
        """Rows of width the largest kernel's work space takes."""
        chunk = _chunk(width)
        return max(4 * chunk, 5 * chunk + 1, 5 * plan.V, 2 * plan.V + 1)


def dense_start(kernels, run: DenseRun, potentials, samples: int, messages) -> float:
    """DenseBP.start's per-run arrays (`run`'s) from the samples' potentials (rows of
    plan.num_potentials) and, for a warm start, their messages (samples, edges, 2; else None):
    w and expm1(|w|), pair_constant, minus_k, H and inner; see cpu_kernels.c.  Returns the
    largest |w| of the samples."""
    plan = run.plan
    _columns(samples, run.width, "dense_start")
    edges = len(plan.edges)
    return kernels.dense_start(
        _buffer(potentials, "potentials", samples, plan.num_potentials), samples,
        plan.num_potentials, run.width, plan.V, plan.P, run.at_u, run.at_v, run.empty,
        len(plan.empty), run.inverse,
        None if messages is None else _buffer(messages, "messages", samples, 2 * edges),
        run.edge_at, edges, run.w, run.E, run.pair_constant, run.minus_k, run.H, run.inner,
        run.chunk, run.scratch)


def dense_sweep(kernels, run: DenseRun, variables, change: bool) -> float:
    """DenseBP._update of each of `variables` (int64, in turn) on `run`'s gaps, in place; the
    largest change of a message entry if `change`, else 0."""
    plan = run.plan
    return kernels.dense_sweep(
        run.H, run.w, run.E, run.inner, run.minus_k, run.pair_of, run.inverse, run.scale,
        run.ratio, plan.V, run.width, _positions(variables, plan.V, "variables"),
        len(variables), int(change), run.scratch)


def dense_pairs(kernels, run: DenseRun, samples: int, beliefs, log_sum, block: int,
                unaries=None) -> bool:
    """DenseBP._pairs from `run`'s shifted gaps H, w and E = expm1(|w|): the pairs' beliefs
    into `beliefs` (samples rows; a pair's four entries from 4 p of a row), if given, and
    log_sum (width,) += the pairs' s log(total), summed `block` pairs at a time; False if a
    total was not finite.  With `unaries` (samples, 2 V, the same rows' unary beliefs) the
    unaries whose beliefs come from a pair (plan.source_u, plan.source_v) are written too."""
    plan = run.plan
    V, P = plan.V, plan.P
    _columns(samples, run.width, "dense_pairs")
    row = 4 * P
    if beliefs is not None:
        if beliefs.dtype != np.float64 or beliefs.shape != (samples, P, 4) \
                or beliefs.strides[1:] != (32, 8) or beliefs.strides[0] % 8:
            raise ValueError(f"dense_pairs: beliefs of shape {beliefs.shape} and strides "
                             f"{beliefs.strides}: expected ({samples}, {P}, 4) rows of pairs")
        row = beliefs.strides[0] // 8
    if unaries is not None and (beliefs is None or unaries.dtype != np.float64
                                or unaries.shape != (samples, 2 * V)
                                or unaries.strides[1] != 8 or (
                                    samples > 1 and unaries.strides[0] != beliefs.strides[0])):
        raise ValueError(f"dense_pairs: unaries of shape {unaries.shape} and strides "
                         f"{unaries.strides}: expected ({samples}, {2 * V}) in the beliefs' rows")
    address = None if beliefs is None else beliefs.ctypes.data
    bad = kernels.dense_pairs(
        run.H, run.w, run.E, samples if address else 0, run.width, P, run.at_u, run.at_v,
        run.inverse, run.scale, address, row, None if unaries is None else unaries.ctypes.data,
        run.source_u, run.source_v, _buffer(log_sum, "log_sum", run.width, 1), block, run.chunk,
        run.scratch)
    return not bad


def dense_unaries(kernels, run: DenseRun, potentials, samples: int, beliefs, dual) -> None:
    """DenseBP.readout's unary part from `run`'s gaps H - minus_k: dual (width,) less the
    unaries' raised gaps plus their terms, and, if `beliefs` (samples rows) is given, the
    beliefs of the unaries with eps c_i > 0 into each row's first 2 V entries; see
    cpu_kernels.c."""
    plan = run.plan
    _columns(samples, run.width, "dense_unaries")
    row = plan.num_potentials
    if beliefs is not None:
        if beliefs.dtype != np.float64 or beliefs.shape != (samples, plan.num_potentials) \
                or beliefs.strides[1] != 8 or beliefs.strides[0] % 8:
            raise ValueError(f"dense_unaries: beliefs of shape {beliefs.shape} and strides "
                             f"{beliefs.strides}: expected {samples} rows of "
                             f"{plan.num_potentials}")
        row = beliefs.strides[0] // 8
    kernels.dense_unaries(
        run.H, run.minus_k, _buffer(potentials, "potentials", samples, plan.num_potentials),
        samples, plan.num_potentials, plan.V, run.width, run.unary_scale,
        None if beliefs is None else beliefs.ctypes.data, row,
        _buffer(dual, "dual", run.width, 1), run.scratch)


def dense_messages(kernels, run: DenseRun, samples: int, messages) -> None:
    """The max-0 messages (samples, edges, 2) from `run`'s gaps H - minus_k at the edges."""
    _columns(samples, run.width, "dense_messages")
    edges = len(run.plan.edges)
    kernels.dense_messages(run.H, run.minus_k, samples, run.width, run.edge_at, edges,
                           _buffer(messages, "messages", samples, 2 * edges), run.chunk,
                           run.scratch)
