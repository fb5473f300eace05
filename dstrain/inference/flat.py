"""The general engine: convex belief propagation on a flattened batch, vectorised over its regions.

The formulas are those of docs/design.md §2.  For a region r with parents P(r), updated as one block:

    mu_{p->r}(y_r)    = eps c_p log sum_{y_p \\ y_r} exp((fhat_p(y_p) - lambda_{r->p}(y_r)) / (eps c_p))
    s_r(y_r)          = f_r(y_r) + sum_{c in C(r)} lambda_{c->r}(y_c) + sum_{p in P(r)} mu_{p->r}(y_r)
    lambda_{r->p}     = c_p / (c_r + sum_{p' in P(r)} c_p') * s_r - mu_{p->r},  minus its max

Regions of one colour share no parent and are not parent and child, so a colour is updated at once
with flat array operations.  ``fhat`` (the reparameterised potential) is kept current incrementally
only where an update reads it (generic parents, regions with children); beliefs and the dual are
computed from a fresh ``fhat`` at the end, so incremental rounding never reaches them.

Pairs whose potential tables are shared (a word model's pairwise tables, one per distance and
used by every word) can be run from the source vector the potentials are gathered from
(``PairSharing``): each table is exponentiated once, a colour's edges that share a table are
one matrix product, and the pairs' beliefs are summed per table instead of formed entry by entry.

``ConvexBP`` (bp.py) runs one ``FlatBP`` per range of samples, in threads.  So that its results
do not depend on how the batch is split, every number here is computed per sample (per region,
edge or entry) by the same operations whatever the range: numpy's exp and log (never a size-
dependent switch to another library), matrix products of fixed shapes, and per-entry fallbacks
for extreme values instead of a switch for a whole colour.

Read-outs after a whole sweep take the pairs' sums from that sweep's products (``_saved_sums``);
a run reuses its beliefs array once nothing else holds it (``ConvexBP._result_array``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..graph.batch import ColourPlan, GraphBatch
from . import cpu_kernels

# a matrix-vector sum below this has lost too much to underflow: redo that entry as log-sum-exp
_UNDERFLOW = 1e-250
# rows per matrix product in _rows_matmul
_ROW_BLOCK = 16
# products with a table whose summed-over variable has at most this many states are a loop of
# multiply-adds over its states instead of matrix products (measured on this VM, 20000 2 x 2
# tables: 0.13 ms against numpy's stacked matmul's 0.49 ms; 15000 3 x 3: 0.21 against 0.37)
_LOOP_STATES = 4
# a fast group of a one-template batch whose edges take at most this many pair slots per sample
# multiplies per slot on views of the tables (no per-edge copies); more slots (a grid) copy.
# Pair groups of at most this many pairs per sample store their exp tables slot-major too (each
# slot's tables of all samples one contiguous run: see FlatBP._view_tables)
_MAX_SLOTS = 32
# start's max-and-exp over a pair table runs in blocks of about this many entries (so the exp
# reads what the max read from the cache)
_BLOCK_ENTRIES = 1 << 17
# slot-major tables are made in blocks of this many entries, then copied to their slots (an exp
# straight into the slots' strided rows took 8.7 against 4.5 ms for 1000 words, a buffer of 27
# samples 7.8 ms, 64 samples 6.0: measured)
_SLOT_BLOCK_ENTRIES = 1 << 19
# views' pair tables are exp(f_p / (eps c_p)) as they are where max f_p / (eps c_p) lies in
# [-_SHIFT_BELOW, _SHIFT_ABOVE], else exp((f_p - max f_p) / (eps c_p)) (FlatBP._view_tables)
_SHIFT_ABOVE, _SHIFT_BELOW = 50.0, 100.0
# a range's exp tables of at least this many bytes, and then its fast pairs' beliefs, are written
# with streaming stores (cpu_kernels.pair_tables, pair_readout: _streamed), which skip reading a
# line in before overwriting it; arrays this large do not stay in a core's share of the cache
# anyway (an A/B of 1000 words or chains on two threads: start and read-out faster, the sweeps
# and a read of the beliefs after the run not slower; a 20-grid batch's 8 MB: no gain)
_STREAM_TABLE_BYTES = 8 << 20
# a range's zero messages from this size are written with streaming stores too (an A/B of 1000
# words, 1000 chains and 20 grids on two threads, bench/results/inference.md's note: start
# faster, the first sweep's reading them from memory not slower)
_STREAM_FILL_BYTES = 1 << 20

# rows of a sliding window are copied faster than entries are scattered from this length
# (measured: rows of 26, 0.14 against 0.24 ms for 5000; rows of 5, 0.38 against 0.18 for 20480)
_WINDOW_ROW = 16

_exp, _log = np.exp, np.log
_NONE = np.zeros(0, dtype=np.int64)


def _streamed(tables: np.ndarray) -> bool:
    """Whether a pair group's exp tables (and then its beliefs) are written with streaming
    stores (_STREAM_TABLE_BYTES)."""
    return tables.nbytes >= _STREAM_TABLE_BYTES


class Workspace:
    """Arrays one run leaves for the next (ConvexBP.run's states never leave the run).  A fresh
    array of tens of MB costs the kernel's zeroing of every page before the first write: 22 ms
    of system time per start of 1000 2nd-order words (their exp tables, 38 MB), measured."""

    def __init__(self):
        self._arrays = {}

    def get(self, key, shape) -> np.ndarray:
        array = self._arrays.get(key)
        if array is None or array.shape != shape:
            array = self._arrays[key] = np.empty(shape)
        return array


class _Fresh:
    """A Workspace that keeps nothing: every state of start() has arrays of its own."""

    @staticmethod
    def get(key, shape) -> np.ndarray:
        return np.empty(shape)


FRESH = _Fresh()


def _products(table: np.ndarray, w: np.ndarray, second: bool, out=None) -> np.ndarray:
    """Each pair's table times the other variable's weights, over the leading axes: r the pair's
    first variable (sum_b t[a, b] w[b]) or, if `second`, its second (sum_a w[a] t[a, b]); into
    `out` if given (a view is fine)."""
    if w.shape[-1] <= _LOOP_STATES:   # a few multiply-adds on whole columns beat tiny matmuls
        column = (lambda j: table[..., j, :]) if second else (lambda j: table[..., :, j])
        out = np.multiply(column(0), w[..., 0:1], out=out)
        for j in range(1, w.shape[-1]):
            out += column(j) * w[..., j:j + 1]
        return out
    if second:
        return np.matmul(w[..., None, :], table,
                         out=None if out is None else out[..., None, :])[..., 0, :]
    return np.matmul(table, w[..., :, None], out=None if out is None else out[..., None])[..., 0]


def _table_rows(table: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a stack of tables, positions in it) such that stack[positions] are the tables at `rows`
    of a PairTable's `table`: a (P, n_a, n_b) stack is its own; a one-template group's (S, P,
    n_a, n_b) tables are a sample-major or a slot-major stack (FlatBP._view_tables)."""
    if table.ndim == 3:
        return table, rows
    samples, per = table.shape[:2]
    if table.flags.c_contiguous:
        return table.reshape(-1, *table.shape[2:]), rows
    by_slot = table.transpose(1, 0, 2, 3)   # (C-contiguous: _view_tables made it)
    return by_slot.reshape(-1, *table.shape[2:]), rows % per * samples + rows // per


def _rows_matmul(w: np.ndarray, table: np.ndarray) -> np.ndarray:
    """w @ table, w (E, n), table (n, m), as products of _ROW_BLOCK rows each.

    OpenBLAS picks its kernel by the matrices' shapes, so a plain (E, n) @ (n, m) gives a row
    different bits for different E (measured: 65 of 75 (E, offset) pairs differed); with every
    product of one shape a row's bits depend on the row alone, whatever range of samples it
    belongs to.
    """
    rows = len(w)
    padded = -(-rows // _ROW_BLOCK) * _ROW_BLOCK
    if padded != rows:
        w = np.concatenate([w, np.zeros((padded - rows, w.shape[1]))])
    out = np.matmul(w.reshape(-1, _ROW_BLOCK, w.shape[1]), table)
    return out.reshape(padded, -1)[:rows]


def _scale_tables(table, rows, columns, out, work=None):
    """out = table * (rows[..., :, None] * columns[..., None, :]) for (A, B, n_a, n_b) stacks of
    tables (rows (A, B, n_a), columns (A, B, n_b)): the outer products first, into `work` (a
    contiguous array of out's shape; default `out`), then one multiply by the tables, whose
    inner loop runs over whole rows of tables (a broadcast's runs over n_b entries only: 1000
    words' beliefs, 13.7 against 7.4 ms into a view of the output, measured).  The outer
    products are an einsum: a broadcast multiply's inner loop is one row of a table long (27 x 7
    words' pairs: 72 against 139 us, measured; the same bits, one product per entry).  (torch's
    multiply was tried: faster for 1000 words on one thread, slower on two, where its calls did
    not run in parallel, and for chains and grids; measured side by side on an idle machine.)"""
    outer = out if work is None else work
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        np.einsum("...i,...j->...ij", rows, columns, out=outer)
        np.multiply(table, outer, out=out)


@dataclass
class PairTable:
    """exp((f_p - top_p) / (eps c_p)) of the fast pairs of one PairGroup; constant during a run."""

    # (P, n_a, n_b), or (V, n_a, n_b) with shared tables, or (S, P, n_a, n_b) for a group of a
    # one-template batch (FlatBP._view_tables; its memory may be slot-major: see _table_rows)
    table: np.ndarray
    top: np.ndarray             # (P,) max of f_p, or (V,)
    # shared tables: (P,) each pair's row of `table` and `top`; so too where rows are reordered
    variant: np.ndarray | None = None
    stored: np.ndarray | None = None   # rows reordered (FlatBP._storage): the pair at each row

    def pair_top(self, pairs=slice(None)) -> np.ndarray:
        return self.top[pairs] if self.variant is None else self.top[self.variant[pairs]]


@dataclass
class PairSharing:
    """Fast pairs whose potential tables are blocks of one source vector, shared by many pairs.

    A word model's pairwise tables (one per distance, or per position) are used by every word of
    a batch: potentials = source[source_index] repeats each table once per pair.  Given the
    source, ``start`` exponentiates each table once instead of once per pair, a sweep multiplies
    all edges that share a table by it in one matrix product, and ``table_beliefs`` sums the
    pairs' beliefs per table (all a shared table's gradient needs) instead of forming them entry
    by entry.  A variant is one (table, eps c_p) combination.  Built by ``FlatBP.sharing``.
    """

    source_size: int
    rest: np.ndarray              # every potential entry that is not a fast pair's
    rest_source: np.ndarray       # its position in the source
    tables: list[np.ndarray]      # per pair group: (T, n_a * n_b) source positions of each table
    variant: list[np.ndarray]     # per pair group: (P,) each pair's variant
    variant_table: list[np.ndarray]   # per pair group: (V,) the table of each variant
    variant_scale: list[np.ndarray]   # per pair group: (V,) its eps c_p
    variant_rows: list[list]      # per pair group: [(variant, pairs)]
    edge_rows: list[list]         # per colour, per fast group: [(edges, variant, r is 2nd variable)]
    readout_source: np.ndarray    # source positions of the engine's read-out entries
    inner_source: list            # per colour: source positions of its region entries (childless)
    num_potentials: int           # N, the batch's potential entries
    rest_blocks: list             # per regions_by_size block: its entries' positions in `rest`
    rest_levels: list             # belief_levels as positions in `rest`
    # set by ConvexBP.sharing where the batch runs in ranges: each range's own PairSharing, and
    # per range, per pair group: (the batch's pair group, each pair's index in it)
    parts: list | None = None
    part_pairs: list | None = None

    def spread(self, rest_values: np.ndarray) -> np.ndarray:
        """(N,) with `rest_values` at the rest entries and NaN at the fast pairs."""
        full = np.full(self.num_potentials, np.nan)
        full[self.rest] = rest_values
        return full

    def table_of(self, group: int, pairs) -> np.ndarray:
        """The shared table (row of `tables[group]`) of some pairs of pair group `group`."""
        return self.variant_table[group][self.variant[group][pairs]]


class FlatState:
    """Potentials, messages and what one run precomputes from the potentials (one FlatBP)."""

    def __init__(self, potentials, readout, messages, fhat, pair_tables, oriented, inner,
                 binary_batch, sharing=None, source=None, extreme=None):
        # (N,) f, float64; with sharing only where fhat is kept (0 at the fast pairs), else None:
        # filling a full-length vector of mostly zeros took about 60 of a start's 200 us (50
        # 2nd-order words, line profile)
        self.potentials = potentials
        self.readout = readout          # f at the engine's read-out entries
        self.sharing = sharing          # PairSharing, or None
        self.source = source            # with sharing: the source vector the tables come from
        self.fhat = fhat                # (N,) reparameterised potentials where read, or None
        self.pair_tables = pair_tables  # list[PairTable], one per pair group
        # per colour, per fast group: its edges' pair tables as stored (None where the group
        # multiplies on views, slot by slot); binary colours: then also the four entries of r's
        # side as columns
        self.oriented = oriented
        self.inner = inner              # per colour: f_r at its region entries if childless
        self._messages = messages       # (M,) each edge's vector with max 0
        # binary batches: the gap lambda(1) - lambda(0) of every edge holds the messages during
        # sweeps (half the memory traffic); `messages` is rebuilt from it when read
        self.gaps = messages[1::2] - messages[0::2] if binary_batch else None
        self._stale = False
        # binary colours: positions of the edges whose pair table has an entry below _UNDERFLOW
        # (their gap update is computed in log space, FlatBP._stable_gap_mu)
        self.extreme = extreme
        # {(colour, fast group): its edges' products sum_o t * exp(lambda_o / (eps c_p))} of
        # the last sweep, whole (FlatBP.sweep); None after any other update
        self.products = None

    @property
    def messages(self) -> np.ndarray:
        if self._stale:   # a max-0 binary message with gap g is (min(0, -g), min(0, g))
            np.minimum(0.0, -self.gaps, out=self._messages[0::2])
            np.minimum(0.0, self.gaps, out=self._messages[1::2])
            self._stale = False
        return self._messages

    def messages_changed(self):
        """After a general update wrote `messages`: refresh the gaps from them."""
        if self.gaps is not None:
            np.subtract(self._messages[1::2], self._messages[0::2], out=self.gaps)


def _log_sum_exp(values: np.ndarray, scale, axis: int) -> np.ndarray:
    """scale * log sum exp(values / scale) along axis, shifted by the max so nothing overflows.

    `scale` has the dimensions of `values`, with length 1 along `axis`.
    """
    z = values / scale
    peak = z.max(axis=axis, keepdims=True)
    return np.squeeze(scale * (peak + np.log(_exp(z - peak).sum(axis=axis, keepdims=True))), axis)


def _window_rows(vector: np.ndarray, size: int) -> np.ndarray:
    """(len - size + 1, size) writable view of a contiguous vector whose row i starts at entry
    i: assigning to some of its rows copies a row per index, not an index per entry."""
    return np.lib.stride_tricks.as_strided(vector, (len(vector) - size + 1, size),
                                           (vector.strides[0],) * 2)


def _spread(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """out[order] = values: values given in `order` (a permutation) put back in index order."""
    out = np.empty_like(values)
    out[order] = values
    return out


def _row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_j x[:, j] y[:, j]; numpy's reduction is slow on short rows, so unroll those (in
    column order: a row's bits do not depend on the others)."""
    if x.shape[1] > 8:
        return (x * y).sum(axis=1)
    out = x[:, 0] * y[:, 0]
    for j in range(1, x.shape[1]):
        out += x[:, j] * y[:, j]
    return out


def _unshifted(values: np.ndarray, scale: np.ndarray) -> bool:
    """Whether every pair's max f_p / (eps c_p) in `values` surely lies in [-_SHIFT_BELOW,
    _SHIFT_ABOVE] (then no pair is shifted): from the largest and smallest entry and the least
    scale, two reductions over the whole block instead of one per pair."""
    least = scale.min()
    return bool(values.max() <= _SHIFT_ABOVE * least and values.min() >= -_SHIFT_BELOW * least)


def _row_sum(block: np.ndarray) -> np.ndarray:
    """Sum over the last axis of a 2-d block; numpy's reduction is slow on short rows, so unroll
    those, adding in numpy's order for fewer than 8 entries (left to right): the same bits
    (20480 rows of 5, a batch of 20 grids' unaries: 0.06 against 0.36 ms, measured)."""
    if block.shape[-1] >= 8 or not block.shape[-1]:
        return block.sum(axis=-1)
    out = block[:, 0].copy()
    for j in range(1, block.shape[-1]):
        out += block[:, j]
    return out


def _row_max(block: np.ndarray) -> np.ndarray:
    """Max over the last axis; numpy's reduction is slow on short rows, so unroll those."""
    if block.shape[-1] > 8:
        return block.max(axis=-1)
    out = block[..., 0].copy()
    for j in range(1, block.shape[-1]):
        np.maximum(out, block[..., j], out=out)
    return out


class FlatBP:
    """Vectorised CPU engine for one GraphBatch (build once per batch, run many times).

    `uniform`: whether to use the layout of a batch of one template (views of its pair tables
    instead of gathers; None: if it is one); a range of a batch takes the whole batch's choice."""

    def __init__(self, batch: GraphBatch, uniform: bool | None = None):
        self.batch = batch
        self.uniform = batch.template is not None if uniform is None else uniform
        self.workspace = Workspace()   # ConvexBP.run's
        # fhat is only read by generic parents and by regions with children
        self._needs_fhat = any(c.generic or not c.childless for c in batch.colours)
        self._binary = [self._binary_plan(c) for c in batch.colours]
        # every message is binary and every colour takes the gap-form update
        self._binary_batch = bool(batch.colours) and all(p is not None for p in self._binary)
        # the read-outs take fhat only of the regions that are not fast pairs (for words: the
        # unaries, 3 % of the entries): a compact vector of those, one block per region size
        blocks = [entries for entries, _, _ in batch.regions_by_size]
        # blocks whose regions' entries are consecutive runs of at least _WINDOW_ROW entries
        # (their beliefs are written as rows of a sliding window)
        self._consecutive = [len(e) > 0 and e.shape[1] >= _WINDOW_ROW
                             and np.array_equal(e, e[:, :1] + np.arange(e.shape[1]))
                             for e in blocks]
        self._readout_entries = np.concatenate([e.ravel() for e in blocks]) if blocks \
            else np.zeros(0, np.int64)
        compact = np.full(batch.num_potentials, -1, dtype=np.int64)
        compact[self._readout_entries] = np.arange(len(self._readout_entries))
        self._compact_parent = compact[batch.parent_entry]          # generic parents: never fast
        self._compact_child = compact[batch.message_child_entry]    # children: never fast pairs
        # each pair group's potential entries as one flat index (faster to gather and scatter than
        # the 2-d one), and whether its scales are all 1 (the table needs no division then)
        self._pair_entries = [g.entries.ravel() for g in batch.pair_groups]
        self._unit_scale = [bool(np.all(g.scale == 1.0)) for g in batch.pair_groups]
        self._blocks = []
        start = 0
        for e in blocks:
            self._blocks.append((slice(start, start + e.size), e.shape))
            start += e.size
        self._inner_rows = [self._inner_plan(c, compact) if c.childless else None
                            for c in batch.colours]
        # one-template batches: each pair group as (first entry, pairs per sample) of a view
        self._pair_views = [self._pair_view(g) if self.uniform else None for g in batch.pair_groups]
        self._stored = [None if view is not None else self._storage(i)
                        for i, view in enumerate(self._pair_views)]
        # groups with reordered tables: their pairs' message entries and scales in the tables'
        # row order, so that the read-outs' weights, sums and beliefs need no reordering
        self._stored_pairs = [None if s is None else (g.message_a[s[0]], g.message_b[s[0]],
                                                      g.scale[s[0]])
                              for g, s in zip(batch.pair_groups, self._stored)]
        self._last_updates = [self._last_update(i) for i in range(len(batch.pair_groups))]
        # fast groups multiplied per pair slot on those views: (slots, r is the 2nd variable)
        self._offsets = {}   # per pair group, the CPU kernels' offsets (_kernel_offsets)
        self._edge_plans = {}   # per (colour, fast group), edge_products' (_edge_rows)
        self._edge_offsets = {}   # and the edges' table offsets and order (_edge_kernel_plan)
        self._colour_updates = {}   # per colour, colour_update's plan (_colour_update)
        self._weight_plans = {}   # per pair group and order, pair_weights' (_weight_starts)
        self._readout_plans = {}   # per pair group, pair_readout's (_readout_plan)
        self._slots = [[None if p is not None else self._slot_plan(g) for g in c.fast]
                       for c, p in zip(batch.colours, self._binary)]
        self._unit_fast = [[bool(np.all(g.scale == 1.0)) for g in c.fast] for c in batch.colours]
        # beliefs of regions with eps c_r <= 0, level by level: (children's entries, each
        # (child, parent) entry pair's child as a position among them, the parents' entries)
        self._levels = []
        for child, parent in batch.belief_levels:
            entries, position = np.unique(child, return_inverse=True)
            self._levels.append((entries, position, parent))

    def _inner_plan(self, colour, compact):
        """(a read-out block's slice and shape, rows of it) if a childless colour's region
        entries are whole rows of that block (then start takes them from the read-out's copy of
        the potentials, a row at a time: _inner_potentials), else None."""
        q = compact[colour.region_entries]
        for where, (rows, n) in self._blocks:
            first = where.start
            if len(q) and n and len(q) % n == 0 and first <= q.min() and q.max() < where.stop:
                by_row = q.reshape(-1, n)
                row = (by_row[:, 0] - first) // n
                if np.array_equal(by_row, first + row[:, None] * n + np.arange(n)):
                    return where, (rows, n), row
        return None

    def _inner_potentials(self, theta: np.ndarray, readout: np.ndarray) -> list:
        """Each childless colour's f at its region entries (None for the others), from the
        read-out's copy `readout` where _inner_plan found its rows, else from theta."""
        out = []
        for c, plan in zip(self.batch.colours, self._inner_rows):
            if not c.childless:
                out.append(None)
            elif plan is None:
                out.append(theta[c.region_entries])
            else:
                where, shape, rows = plan
                out.append(np.take(readout[where].reshape(shape), rows, axis=0).ravel())
        return out

    def _last_update(self, group: int):
        """Where a sweep updates each pair of pair group `group` last (the edge of its endpoint
        in the later colour): [(colour, fast group, pairs, their rows in _storage's order (or
        the pairs again), their edges, r is the 2nd variable)]; None if some pair has no edge."""
        g = self.batch.pair_groups[group]
        owner = np.full(len(g.entries), -1)
        edge = np.zeros(len(g.entries), np.int64)
        keys = []
        for k, colour in enumerate(self.batch.colours):
            for i, f in enumerate(colour.fast):
                if f.pair_group == group:   # (a later colour overwrites)
                    owner[f.pairs] = len(keys)
                    edge[f.pairs] = np.arange(len(f.pairs))
                    keys.append((k, i))
        if (owner < 0).any():
            return None
        plan = []
        for code, (k, i) in enumerate(keys):
            pairs = np.flatnonzero(owner == code)
            second = self.batch.colours[k].fast[i].transposed[edge[pairs]]
            for flag in (False, True):
                mine = pairs[second == flag]
                rows = mine if self._stored[group] is None else self._stored[group][1][mine]
                if len(mine):
                    plan.append((k, i, mine, rows, edge[mine], flag))
        return plan

    def _saved_sums(self, state: FlatState, group: int, w_a, w_b, in_rows: bool):
        """The pairs' sums sum_ab table * w_a * w_b from the last sweep's products, where it ran
        whole after start: at its last update of a pair, the product of the table with the
        other endpoint's (final) weights is formed; times r's final weights it is the sum
        (the read-out's matrix products skipped).  None where they are not all there.
        `in_rows`: w_a, w_b and the sums in the tables' row order (_storage), else the pairs'."""
        plan = self._last_updates[group]
        if plan is None or not state.products:
            return None
        total = np.empty(len(w_a))
        kernels = cpu_kernels.library()
        for k, i, pairs, rows, edges, second in plan:
            products = state.products.get((k, i))
            if products is None:
                return None
            at = rows if in_rows else pairs
            w = w_b if second else w_a
            if kernels is not None and products.flags.c_contiguous and w.flags.c_contiguous:
                cpu_kernels.row_dots(kernels, products, edges, w, at, total)   # (cpu_kernels.c)
            else:
                total[at] = _row_dot(products[edges], w[at])
        return total

    def _storage(self, group: int):
        """(the pair at each row, each pair's row, each row's first entry) of the exp tables of
        pair group `group` (without views), rows ordered so that the edges of a colour's fast
        group on one side (r the pair's first variable, or its second) are consecutive rows in
        their order where they can be: the sweeps multiply slices of the tables then, not copies
        (1000 chains: 2 x 43 MB copied a start); None if a pair's entries are not consecutive."""
        g = self.batch.pair_groups[group]
        count, size = g.entries.shape
        if not count or not np.array_equal(g.entries, g.entries[:, :1] + np.arange(size)):
            return None
        first = np.full(count, np.iinfo(np.int64).max)   # each pair's first side, its place
        code = 0
        for colour in self.batch.colours:
            for f in colour.fast:
                if f.pair_group != group:
                    continue
                for side in (~f.transposed, f.transposed):
                    pairs = f.pairs[side]
                    first[pairs] = np.minimum(first[pairs], code * count + np.arange(len(pairs)))
                    code += 1
        stored = np.argsort(first, kind="stable")
        row = np.empty(count, np.int64)
        row[stored] = np.arange(count)
        return stored, row, g.entries[stored, 0]

    def _pair_view(self, g):
        """(first entry, pairs per sample) if pair group g's tables are one run of entries in
        every sample of a one-template batch: (S, P, n_a, n_b) views of the potentials."""
        b = self.batch
        samples, (count, size) = b.num_samples, g.entries.shape
        stride = b.num_potentials // samples
        if count % samples:
            return None
        per = count // samples
        first = int(g.entries[0, 0])
        expected = (np.arange(samples) * stride)[:, None] + first + np.arange(per * size)
        if not np.array_equal(g.entries.reshape(samples, per * size), expected):
            return None
        return first, per

    def _slot_plan(self, g):
        """(pair slots, r is the pair's 2nd variable per slot) if fast group g's edges are the same
        few slots of every sample, sample after sample, on a pair-group view."""
        view = self._pair_views[g.pair_group]
        samples = self.batch.num_samples
        if view is None or len(g.pairs) % samples or len(g.pairs) // samples > _MAX_SLOTS:
            return None
        pairs = g.pairs.reshape(samples, -1)
        slots = pairs[0] - 0
        second = g.transposed.reshape(samples, -1)
        if not np.array_equal(pairs, (np.arange(samples) * view[1])[:, None] + slots) \
                or not (second == second[0]).all():
            return None
        return slots, second[0]

    def _view(self, vector: np.ndarray, group: int) -> np.ndarray:
        """(S, P, n_a, n_b) view of pair group `group`'s entries of a potential-shaped vector."""
        first, per = self._pair_views[group]
        g = self.batch.pair_groups[group]
        samples = self.batch.num_samples
        rows = vector.reshape(samples, -1)
        return rows[:, first:first + per * g.entries.shape[1]].reshape(
            samples, per, *self._pair_shape(g))

    def _kernel_offsets(self, group: int, table: np.ndarray):
        """(contiguous buffer of the PairTable's `table`, each row's table's offset in it, the
        offset of each row's pair in the potentials and beliefs, the rows in the potentials'
        order or None if they are) for the CPU kernels, the rows in the tables' order (the
        pairs', or _storage's).  (Taken in the potentials' order, 1000 chains' exp tables read
        the potentials as one stream, not every other table twice over.)"""
        cached = self._offsets.get(group)
        if cached is None:
            g = self.batch.pair_groups[group]
            stored = self._stored[group]
            entry_at = np.ascontiguousarray(g.entries[:, 0] if stored is None else stored[2],
                                            dtype=np.int64)
            rows = _table_rows(table, np.arange(len(entry_at)))[1]
            order = None if np.all(np.diff(entry_at) > 0) else np.argsort(entry_at)
            cached = self._offsets[group] = tuple(  # (checked once: the kernels take them often)
                None if a is None else cpu_kernels.Indices(a)
                for a in (rows * g.entries.shape[1], entry_at, order))
        return (_table_rows(table, _NONE)[0].reshape(-1),) + cached

    @functools.cached_property
    def _message_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each edge's message starts, and each message entry's edge (for warm starts)."""
        starts = self.batch.message_edge_start
        lengths = np.diff(starts, append=self.batch.num_messages)
        return starts, np.repeat(np.arange(len(starts)), lengths)

    @staticmethod
    def _binary_plan(c: ColourPlan):
        """Index arrays of the gap-form update, if colour c is binary unaries under fast pairs."""
        if c.generic or len(c.fast) != 1 or not c.childless or c.fast[0].own.shape[1] != 2 \
                or c.fast[0].other.shape[1] != 2:
            return None
        g = c.fast[0]
        # every region of the colour has 2 states, so its states are entries 2r, 2r + 1 of Q
        region = c.edge_entry_q[g.entries][0::2] // 2
        ratio = c.edge_entry_ratio[g.entries][0::2]
        # a binary batch stores edge e's message at entries 2e, 2e + 1
        return g.own[:, 0] // 2, g.other[:, 0] // 2, region, ratio, g.scale

    def sharing(self, source_index, source_size: int, force: bool = False) -> PairSharing | None:
        """The shared tables of the fast pairs if potentials = source[source_index], source of
        `source_size` entries; None where that gains nothing or cannot be used: a pair's entries
        are not one contiguous block of the source (in C order), no table is shared (unless
        `force`: a range of a batch whose tables are shared), two tables overlap, or some
        region's belief is marginalised from a fast pair's."""
        b = self.batch
        source_index = np.asarray(source_index, dtype=np.int64)
        if source_index.shape != (b.num_potentials,):
            raise ValueError(f"source_index: expected {b.num_potentials} entries for this batch, "
                             f"got shape {source_index.shape}")
        if not b.pair_groups:
            return None
        is_pair = np.zeros(b.num_potentials, dtype=bool)
        tables, variant, variant_table, variant_scale, variant_rows = [], [], [], [], []
        for g in b.pair_groups:
            src = source_index[g.entries]
            if not np.array_equal(src, src[:, :1] + np.arange(src.shape[1])):
                return None
            starts, table_of = np.unique(src[:, 0], return_inverse=True)
            scales, scale_of = np.unique(g.scale, return_inverse=True)
            keys, variant_of = np.unique(table_of * len(scales) + scale_of, return_inverse=True)
            tables.append(starts[:, None] + np.arange(src.shape[1]))
            variant.append(variant_of)
            variant_table.append(keys // len(scales))
            variant_scale.append(scales[keys % len(scales)])
            variant_rows.append([(v, np.flatnonzero(variant_of == v)) for v in range(len(keys))])
            is_pair[g.entries] = True
        positions = np.concatenate([t.ravel() for t in tables])
        if (len(positions) >= sum(g.entries.size for g in b.pair_groups) and not force) \
                or len(np.unique(positions)) < len(positions) \
                or positions.min() < 0 or positions.max() >= source_size:
            return None
        if any(is_pair[parent].any() for _, parent in b.belief_levels):
            return None
        edge_rows = []
        for colour in b.colours:
            per_group = []
            for g in colour.fast:
                key = variant[g.pair_group][g.pairs] * 2 + g.transposed
                kinds = np.unique(key)
                per_group.append([(np.flatnonzero(key == k) if len(kinds) > 1 else slice(None),
                                   int(k // 2), bool(k % 2)) for k in kinds])
            edge_rows.append(per_group)
        rest = np.flatnonzero(~is_pair)
        inner_source = [source_index[c.region_entries] if c.childless else None for c in b.colours]
        # no fast pair is a read-out region or a parent of one (checked above), nor a child
        in_rest = functools.partial(np.searchsorted, rest)
        return PairSharing(int(source_size), rest, source_index[rest], tables, variant,
                           variant_table, variant_scale, variant_rows, edge_rows,
                           source_index[self._readout_entries], inner_source, b.num_potentials,
                           [in_rest(entries) for entries, _, _ in b.regions_by_size],
                           [(in_rest(child), in_rest(parent)) for child, parent in b.belief_levels])

    # --- state ----------------------------------------------------------------------------
    def start(self, theta: np.ndarray, lam: np.ndarray, given: np.ndarray | None,
              sweeps: int | None = None, sharing: PairSharing | None = None,
              workspace=FRESH) -> FlatState:
        """The state a run sweeps on (inputs checked by ConvexBP): `theta` the batch's potentials
        (float64), or with `sharing` (from ``self.sharing``) the source vector it indexes; `lam`
        the (M,) array the state keeps its messages in, filled here with the `given` messages
        (a warm start; normalised to max 0 per edge) or zeros; `sweeps`: how many will run, if
        known (unused); `workspace`: where the per-run arrays come from (a Workspace only where
        the previous state is done with)."""
        b = self.batch
        source = None
        if sharing is not None:
            source, theta = theta, None
            if self._needs_fhat:   # reparameterise reads f everywhere
                theta = np.zeros(b.num_potentials)
                theta[sharing.rest] = source[sharing.rest_source]
            readout = source[sharing.readout_source]
            inner = [source[where] if where is not None else None for where in sharing.inner_source]
        else:
            readout = theta[self._readout_entries]
            inner = self._inner_potentials(theta, readout)
        warm, kernels = given is not None, cpu_kernels.library()
        if warm:
            np.copyto(lam, given)
        elif lam.nbytes >= _STREAM_FILL_BYTES and kernels is not None:
            cpu_kernels.zeros_streamed(kernels, lam)
        else:
            lam.fill(0.0)
        if warm and len(lam):   # shift every message to max 0: the dual is unchanged
            starts, edge_of_entry = self._message_edges
            lam -= np.maximum.reduceat(lam, starts)[edge_of_entry]
        pair_tables = self.pair_tables(theta if sharing is None else source, sharing, workspace)
        oriented = []
        for colour, binary in zip(b.colours, self._binary):
            if sharing is not None and binary is None:   # sweeps use sharing.edge_rows instead
                oriented.append(None)
                continue
            k = len(oriented)
            if binary is not None:   # the gap-form update reads the four entries as columns
                g = colour.fast[0]
                table = self._edge_tables(pair_tables[g.pair_group], g, slice(None), workspace.get(
                    ("edges", k), (len(g.pairs), 2, 2)))
                tables = [tuple(np.where(g.transposed, table[:, j, i], table[:, i, j])
                                for i in (0, 1) for j in (0, 1))
                          + (inner[k][1::2] - inner[k][0::2],)]
                if not self._binary_batch:   # (the general update runs this colour)
                    tables.insert(0, self._split_tables(pair_tables[g.pair_group], g, workspace,
                                                        (k, 0)))
            else:   # per group: None (slot by slot on views, or the CPU kernels on the
                # tables in place) or its edges' tables, two stacks
                kernels = sharing is None and cpu_kernels.library() is not None
                tables = [None if slots is not None or (kernels and self._edge_rows(k, i))
                          else self._split_tables(pair_tables[g.pair_group], g, workspace, (k, i))
                          for i, (g, slots) in enumerate(zip(colour.fast, self._slots[k]))]
            oriented.append(tables)
        fhat = self.reparameterise(theta, lam) if self._needs_fhat else None
        extreme = None
        if self._binary_batch:   # edges whose table spans more than the gap form can use
            # (an entry below 1e-250 of the table's largest: the gap's ratio could be subnormal)
            tiny = [(np.min(t.table, axis=(-2, -1)) / np.max(t.table, axis=(-2, -1))
                     < _UNDERFLOW).ravel()[t.variant if t.variant is not None else slice(None)]
                    for t in pair_tables]
            extreme = [np.flatnonzero(tiny[c.fast[0].pair_group][c.fast[0].pairs])
                       if any(t.any() for t in tiny) else _NONE for c in b.colours]
        state = FlatState(theta, readout, lam, fhat, pair_tables, oriented, inner,
                          self._binary_batch, sharing, source, extreme)
        state.workspace = workspace   # (the read-outs' arrays come from it too)
        return state

    def pair_tables(self, theta: np.ndarray, sharing: PairSharing | None = None,
                    workspace=FRESH) -> list[PairTable]:
        """exp((f_p - max f_p) / (eps c_p)) of every fast pair (or shared variant), per group."""
        out = []
        for i, (g, entries, unit) in enumerate(zip(self.batch.pair_groups, self._pair_entries,
                                                   self._unit_scale)):
            if sharing is None and self._pair_views[i] is not None:
                out.append(self._view_tables(theta, i, unit, workspace))
                continue
            if sharing is None and self._stored[i] is not None:
                out.append(self._stored_tables(theta, i, unit, workspace))
                continue
            if sharing is None:
                table = np.take(theta, g.entries, out=workspace.get(("pairs", i), g.entries.shape),
                                mode="clip")
                scale, variant = g.scale, None
            else:   # one table per variant (fancy indexing copies: exp is taken in place)
                table = theta[sharing.tables[i][sharing.variant_table[i]]]
                scale, variant = sharing.variant_scale[i], sharing.variant[i]
            top = _row_max(table)
            table -= top[:, None]
            if not unit:
                table /= scale[:, None]
            _exp(table, out=table)
            out.append(PairTable(table.reshape(len(table), *self._pair_shape(g)), top, variant))
        return out

    def _view_tables(self, theta: np.ndarray, group: int, unit: bool, workspace) -> PairTable:
        """pair_tables for a group with views, read from the potentials without a gather, block
        by block (max, then exp on what is still in the cache).  A pair whose max f_p / (eps c_p)
        lies in [-100, 50] is exponentiated as it is (its `top` is 0): subtracting each pair's
        max, a broadcast over rows of 676, took 4.9 ms for 1000 words (the exp 3.1 ms).  Entries
        stay below e^50, so a product with a weight that underflowed (below 1e-308) stays far
        below the 1e-250 under which a sum takes the exact fallback, as with entries <= 1; and a
        table's largest is above e^-100, so an entry within 1e-250 of it is no subnormal (the
        binary gap form's bound, start).

        The tables are (S, P, n_a, n_b), and slot-major in memory where P <= _MAX_SLOTS: a
        sweep multiplies one slot of every sample at a time (FlatBP._fast_mu), and reads a
        slot's tables as one contiguous run instead of one table every P.  For 1000 2nd-order
        words on one thread, `run()`'s start / sweep / read-out went from 8.8 / 16.7 / 13.4 to
        11.0 / 10.4 / 14.5 ms: the copy into the slots costs the start, and the copy back
        (_view_pair_beliefs) the read-out (an interleaved A/B on this kind of 2-core VM).  Where
        the CPU kernels are built, they make each pair's table in one pass straight into its
        slot instead (cpu_kernels.pair_tables)."""
        g = self.batch.pair_groups[group]
        first, per = self._pair_views[group]
        samples, size = self.batch.num_samples, g.entries.shape[1]
        view = theta.reshape(samples, -1)[:, first:first + per * size].reshape(samples, per, size)
        shape = self._pair_shape(g)
        by_slot = per <= _MAX_SLOTS
        step = max(1, (_SLOT_BLOCK_ENTRIES if by_slot else _BLOCK_ENTRIES) // max(1, per * size))
        if by_slot:   # (P, S, ...) in memory, (S, P, ...) as the tables; blocks made contiguous
            stored = workspace.get(("pairs", group), (per, samples, *shape))
            table = stored.transpose(1, 0, 2, 3)
            out = stored.reshape(per, samples, size).transpose(1, 0, 2)
        else:
            table = workspace.get(("pairs", group), (samples, per, *shape))
            out = table.reshape(view.shape)
        top = np.empty((samples, per))
        kernels = cpu_kernels.library()
        if kernels is not None:   # one pass: each pair's max and exp straight into its slot
            buffer, table_at, entry_at, order = self._kernel_offsets(group, table)
            scale = np.ascontiguousarray(g.scale)
            cpu_kernels.pair_tables(kernels, theta, entry_at, buffer, table_at, size, scale,
                                    unit or bool(np.all(scale == scale[:1])), top.reshape(-1),
                                    _SHIFT_ABOVE, _SHIFT_BELOW, order, streamed=_streamed(buffer))
            return PairTable(table, top.ravel())
        if by_slot:
            work = workspace.get(("pairs block", group), (min(step, samples), per, size))
        scale = g.scale.reshape(samples, per)
        one_scale = bool(np.all(g.scale == g.scale[0])) if len(g.scale) else True
        for s in range(0, samples, step):
            rows = slice(s, s + step)
            block = work[:len(out[rows])] if by_slot else out[rows]
            plain = _unshifted(view[rows], scale[rows])
            if not plain:
                np.max(view[rows], axis=2, out=top[rows])
            with np.errstate(over="ignore"):   # (overflows are in pairs shifted below)
                if unit:
                    _exp(view[rows], out=block)
                else:
                    if one_scale:
                        np.multiply(view[rows], 1.0 / g.scale[0], out=block)
                    else:
                        np.divide(view[rows], scale[rows, :, None], out=block)
                    _exp(block, out=block)
            if plain:
                top[rows] = 0.0
            else:
                shift = (top[rows] > _SHIFT_ABOVE * scale[rows]) \
                    | (top[rows] < -_SHIFT_BELOW * scale[rows])
                if shift.any():   # (extreme potentials: those pairs with their max subtracted)
                    i, j = np.nonzero(shift)
                    block[i, j] = _exp((view[rows][i, j] - top[rows][i, j, None])
                                       / scale[rows][i, j, None])
                top[rows][~shift] = 0.0
            if by_slot:
                out[rows] = block
        return PairTable(table, top.ravel())

    def _stored_tables(self, theta: np.ndarray, group: int, unit: bool, workspace) -> PairTable:
        """pair_tables for a group in the rows of _storage, block by block: each block's pairs
        gathered as rows of a sliding-window view of the potentials (no index per entry), its
        max and exp while it is in the cache; shifted by the max only where _view_tables does.

        Where the CPU kernels are built, they make the tables instead, in one pass taking the
        pairs in the potentials' order (cpu_kernels.pair_tables).

        (1000 chains: the gather, 4-6 ms, reads every other table of the potentials, where a
        gather in the potentials' order took 3.6 against 6.1 ms cold; but passing the blocks in
        that order cost a second copy into the rows, and rows in the potentials' order within
        each side with the two sides' blocks interleaved saved 0.5 ms of the gather alone and
        nothing measurable in a run: all measured, none kept.)"""
        g = self.batch.pair_groups[group]
        stored, row, first = self._stored[group]
        size = g.entries.shape[1]
        windows = np.lib.stride_tricks.sliding_window_view(theta, size)
        table = workspace.get(("pairs", group), (len(stored), size))
        top = np.empty(len(stored))
        scale = g.scale[stored]
        kernels = cpu_kernels.library()
        if kernels is not None:   # one pass: each pair's max and exp straight into its row
            table = table.reshape(len(stored), *self._pair_shape(g))
            buffer, table_at, entry_at, order = self._kernel_offsets(group, table)
            cpu_kernels.pair_tables(kernels, theta, entry_at, buffer, table_at, size, scale, unit,
                                    top, _SHIFT_ABOVE, _SHIFT_BELOW, order,
                                    streamed=_streamed(buffer))
            return PairTable(table, top, row, stored)
        step = max(1, _BLOCK_ENTRIES // size)
        for s in range(0, len(stored), step):
            rows = slice(s, s + step)
            block = windows[first[rows]]   # (a copy the size of the cache)
            if _unshifted(block, scale[rows]):
                top[rows] = 0.0
            else:
                top[rows] = _row_max(block)
                shift = (top[rows] > _SHIFT_ABOVE * scale[rows]) \
                    | (top[rows] < -_SHIFT_BELOW * scale[rows])
                if shift.any():   # (extreme potentials: those pairs with their max subtracted)
                    block[shift] -= top[rows][shift, None]
                top[rows][~shift] = 0.0
            if not unit:
                block /= scale[rows, None]
            with np.errstate(over="ignore"):
                _exp(block, out=table[rows])
        return PairTable(table.reshape(len(stored), *self._pair_shape(g)), top, row, stored)

    def signature(self) -> tuple:
        """What decides how a colour is updated (the gap form, fhat or f as the inner term):
        ranges of a batch run in parallel only where theirs equal the whole batch's."""
        return self._binary_batch, [(c.childless, bool(c.generic), p is None)
                                    for c, p in zip(self.batch.colours, self._binary)]

    @staticmethod
    def _edge_tables(pt: PairTable, g, edges, out) -> np.ndarray:
        """The pair tables of some edges of fast group g (a gather, into `out`)."""
        pairs = g.pairs[edges]
        table, rows = _table_rows(pt.table, pairs if pt.variant is None else pt.variant[pairs])
        return np.take(table, rows, axis=0, out=out, mode="clip")

    def _split_tables(self, pt: PairTable, g, workspace, key) -> tuple:
        """Fast group g's edges whose r is the pair's first variable and their tables, then the
        others and theirs: the products take a stack of each as stored (matrix-vector and
        vector-matrix), with no copy of the tables in a sweep and no transposed copies."""
        out = []
        for side, edges in enumerate((np.flatnonzero(~g.transposed), np.flatnonzero(g.transposed))):
            table, rows = _table_rows(pt.table, g.pairs[edges] if pt.variant is None
                                      else pt.variant[g.pairs[edges]])
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and (np.diff(rows) == 1).all():
                out += [edges, table[rows[0]:rows[-1] + 1]]   # consecutive rows: a view
                continue
            out += [edges, np.take(table, rows, axis=0, mode="clip", out=workspace.get(
                (*key, side), (len(edges), *table.shape[1:])))]
        return tuple(out)

    @staticmethod
    def _pair_shape(g) -> tuple[int, int]:
        return g.message_a.shape[1], g.message_b.shape[1]

    def reparameterise(self, theta, lam) -> np.ndarray:
        """fhat_r = f_r + sum_{c in C(r)} lambda_{c->r} - sum_{p in P(r)} lambda_{r->p}.

        Exact for every region except the fast pairs (which get f_p: nothing here reads theirs).
        """
        b = self.batch
        n = b.num_potentials
        return (theta + np.bincount(b.parent_entry, lam[b.parent_entry_message], n)
                - np.bincount(b.message_child_entry, lam, n))

    # --- one block-coordinate step per colour --------------------------------------------
    def update_colour(self, state: FlatState, k: int, change: bool = True,
                      whole: bool = False) -> float:
        """Update all regions of colour k; return the largest message change (0 where `change`
        is False: runs of a fixed number of sweeps need it after the last one only); `whole`:
        part of a sweep (else the last sweep's products are stale)."""
        if not whole:
            state.products = None
        if state.gaps is not None:
            return self._update_binary_colour(state, k, change)
        plan: ColourPlan = self.batch.colours[k]
        lam, fhat = state.messages, state.fhat
        update = self._colour_update(k) if fhat is None else None
        if update is not None:   # the rest of the update in one call (cpu_kernels.c)
            mu = self._fast_mu(state, k, 0, lam)
            return cpu_kernels.colour_update(cpu_kernels.library(), update, mu, state.inner[k],
                                             lam, change)
        if len(plan.fast) == 1 and not plan.generic:   # (no copy into a vector of all groups)
            mu = self._fast_mu(state, k, 0, lam).ravel()
        else:
            mu = np.empty(len(plan.edge_entry_message))
            for i, g in enumerate(plan.fast):
                mu[g.entries] = self._fast_mu(state, k, i, lam).ravel()
            for g in plan.generic:
                mu[g.entries] = self._generic_mu(g, fhat, lam).ravel()

        q = plan.edge_entry_q
        num_q = len(plan.region_entries)
        if plan.childless:
            inner = state.inner[k]
        else:   # f_r + sum_c lambda_{c->r} = fhat_r + sum_p lambda_{r->p}
            inner = fhat[plan.region_entries] + np.bincount(q, lam[plan.edge_entry_message], num_q)
        total = inner + np.bincount(q, mu, num_q)
        new = plan.edge_entry_ratio * total[q] - mu
        for g in plan.fast + plan.generic:
            # a constant per message leaves the dual unchanged; max 0 keeps messages bounded
            block = new[g.entries].reshape(len(g.own), -1)
            block -= _row_max(block)[:, None]
        if fhat is None and not change:
            lam[plan.edge_entry_message] = new
            state.messages_changed()
            return 0.0
        delta = new - lam[plan.edge_entry_message]
        lam[plan.edge_entry_message] = new
        if fhat is not None:
            if not plan.childless:
                fhat[plan.region_entries] -= np.bincount(q, delta, num_q)
            # no two regions of a colour share a parent, so these indices are distinct
            fhat[plan.parent_entry] += delta[plan.parent_entry_source]
        state.messages_changed()
        return float(np.abs(delta).max()) if len(delta) else 0.0

    def _colour_update(self, k: int):
        """cpu_kernels.colour_update's plan of colour k where it can take the colour (one fast
        group, childless regions, the CPU kernels built), else None (cached)."""
        update = self._colour_updates.get(k)
        if update is None:
            plan: ColourPlan = self.batch.colours[k]
            update = False
            if cpu_kernels.library() is not None and len(plan.fast) == 1 and not plan.generic \
                    and plan.childless:
                g = plan.fast[0]
                update = cpu_kernels.ColourUpdate(
                    plan.edge_entry_q, plan.edge_entry_ratio, plan.edge_entry_message,
                    *g.own.shape, len(plan.region_entries), self.batch.num_messages)
            self._colour_updates[k] = update
        return update or None

    def _update_binary_colour(self, state: FlatState, k: int, change: bool = True) -> float:
        """update_colour for batches of binary unaries under binary fast pairs (image tagging).

        Fully connected binary graphs have one colour per variable and little work per colour, so
        the number of array operations and memory traffic decide the speed: the update works on
        the gap g = lambda(1) - lambda(0) of each message, with one exp and one log per edge:

            mu_{p->r}(1) - mu_{p->r}(0) = eps c_p log((t_10 + t_11 e) / (t_00 + t_01 e)),
            e = exp(g_{o->p} / (eps c_p)),  t = exp((f_p - top_p) / (eps c_p))

        Edges whose table has an entry below 1e-250 of its largest (found by start) and entries
        where e overflowed (a non-finite sum) take the same difference in log space, entry by
        entry.
        Returns the largest message entry change.
        """
        own, other, region, ratio, scale = self._binary[k]
        t_00, t_01, t_10, t_11, inner_gap = state.oriented[k][-1]
        x = state.gaps[other] / scale
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = _exp(x)
            mu_gap = scale * _log((t_10 + t_11 * e) / (t_00 + t_01 * e))
        if len(state.extreme[k]):
            mu_gap[state.extreme[k]] = self._stable_gap_mu(state, k, state.extreme[k], x)
        sums = np.bincount(region, mu_gap, len(inner_gap))
        if not np.isfinite(sums).all():   # e = inf: inf / inf
            bad = np.flatnonzero(~np.isfinite(mu_gap))
            mu_gap[bad] = self._stable_gap_mu(state, k, bad, x)
            sums = np.bincount(region, mu_gap, len(inner_gap))
        new_gap = ratio * (inner_gap + sums)[region] - mu_gap
        # a max-0 message with gap g is (min(0, -g), min(0, g)): its entries change by
        # |d min(0, g)| and |d g - d min(0, g)| (the same largest change the general path reports)
        largest = 0.0
        if change and len(new_gap):
            old_gap = state.gaps[own]
            low = np.minimum(new_gap, 0.0) - np.minimum(old_gap, 0.0)
            largest = float(max(np.abs(low).max(), np.abs(new_gap - old_gap - low).max()))
        state.gaps[own] = new_gap
        state._stale = True
        return largest

    def _stable_gap_mu(self, state: FlatState, k: int, edges: np.ndarray, x: np.ndarray):
        """The gap-form mu of some edges of binary colour k in log space, from f itself:
        eps c_p (logaddexp(l_10, l_11 + x) - logaddexp(l_00, l_01 + x)), l = f_p / (eps c_p) with
        r's states as rows (the max of f_p cancels)."""
        g = self.batch.colours[k].fast[0]
        f = self._pair_f(state, g.pair_group, g.pairs[edges])
        flip = g.transposed[edges]
        f[flip] = f[flip].transpose(0, 2, 1)
        scale = g.scale[edges]
        lf = f / scale[:, None, None]
        x = x[edges]
        return scale * (np.logaddexp(lf[:, 1, 0], lf[:, 1, 1] + x)
                        - np.logaddexp(lf[:, 0, 0], lf[:, 0, 1] + x))

    def _fast_mu(self, state, k: int, i: int, lam) -> np.ndarray:
        """mu_{p->r} of fast group i of colour k, up to a constant per edge (which the update's
        normalisation removes)."""
        g = self.batch.colours[k].fast[i]
        unit = self._unit_fast[k][i]
        scale = g.scale[:, None]
        kernels = cpu_kernels.library() if state.sharing is None else None
        edges = None if kernels is None else self._edge_kernel_plan(state, k, i)
        if edges is not None:   # weights, products and logs in one call (cpu_kernels.c)
            total, mu = np.empty((2, *g.own.shape))
            smallest = cpu_kernels.edge_products(kernels, lam, *edges, total, mu)
        else:
            total = self._numpy_products(state, k, i, lam)
            smallest = total.min() if len(total) else np.inf
            with np.errstate(divide="ignore"):
                mu = _log(total)
            if not unit:
                mu *= scale
        if state.products is not None:   # (FlatBP.sweep: the read-outs take it)
            state.products[k, i] = total
        if smallest < _UNDERFLOW:
            # extreme potentials: exact log-sum-exp for the entries that underflowed
            other = lam[g.other]
            e, y = np.nonzero(total < _UNDERFLOW)
            f = self._pair_f(state, g.pair_group, g.pairs[e])
            flip = g.transposed[e]
            rows = np.empty((len(e), other.shape[1]))
            if not flip.all():
                rows[~flip] = f[np.flatnonzero(~flip), y[~flip], :]
            if flip.any():
                rows[flip] = f[np.flatnonzero(flip), :, y[flip]]
            top = state.pair_tables[g.pair_group].pair_top(g.pairs[e])
            mu[e, y] = _log_sum_exp(rows - top[:, None] + other[e], scale[e], axis=1)
        return mu

    def _numpy_products(self, state, k: int, i: int, lam) -> np.ndarray:
        """numpy's path of _fast_mu's products: each edge's table times the other variable's
        weights exp(lambda_{o->p} / (eps c_p))."""
        g = self.batch.colours[k].fast[i]
        other = lam[g.other]               # max 0, so the weights below are in (0, 1]
        weights = _exp(other if self._unit_fast[k][i] else other / g.scale[:, None])
        slots = self._slots[k][i]
        if state.sharing is not None:   # one matrix product per variant and side
            tables = state.pair_tables[g.pair_group].table
            total = np.empty((len(weights), g.own.shape[1]))
            for edges, v, second in state.sharing.edge_rows[k][i]:
                # r is the pair's first variable: sum_b t[a, b] w[b]; its second: sum_a w[a] t[a, b]
                total[edges] = _rows_matmul(weights[edges], tables[v] if second else tables[v].T)
            return total
        if slots is not None:   # slot by slot on views of the pair tables
            table = state.pair_tables[g.pair_group].table   # (S, P, n_a, n_b), slot-major
            samples = self.batch.num_samples
            w = weights.reshape(samples, len(slots[0]), -1)
            total = np.empty((samples, len(slots[0]), g.own.shape[1]))
            for j, (slot, second) in enumerate(zip(*slots)):
                _products(table[:, slot], w[:, j], bool(second), out=total[:, j])
            return total.reshape(len(weights), -1)
        return self._edge_products(state.oriented[k][i], weights)

    def _edge_kernel_plan(self, state, k: int, i: int):
        """cpu_kernels.edge_products' arguments for fast group i of colour k: the other
        messages' starts, the pair tables' buffer, each edge's table offset in it, r is the
        pair's second variable, the table's shape and the scales (None where all are 1); None
        where the kernel cannot take the group (see _edge_rows)."""
        g = self.batch.colours[k].fast[i]
        pt = state.pair_tables[g.pair_group]
        rows = self._edge_rows(k, i)   # (no shared tables here: their variants are not rows)
        if rows is None:
            return None
        buffer, table_at = self._kernel_offsets(g.pair_group, pt.table)[:2]
        other_at, rows, second, scale = rows
        offsets = self._edge_offsets.get((k, i))
        if offsets is None:   # (the tables' layout is the engine's: fixed from the first run)
            edge_table_at = np.ascontiguousarray(table_at[rows])
            # in the tables' order: slot-major tables are read as a few streams, not many
            order = None if np.all(np.diff(edge_table_at) > 0) \
                else np.argsort(edge_table_at, kind="stable")
            offsets = self._edge_offsets[k, i] = (cpu_kernels.Indices(edge_table_at),
                                                  None if order is None
                                                  else cpu_kernels.Indices(order))
        return (other_at, buffer, offsets[0], second,
                *self._pair_shape(self.batch.pair_groups[g.pair_group]), scale, offsets[1])

    def _edge_rows(self, k: int, i: int):
        """(each edge's other message start, its pair's row of the group's tables, r is the
        pair's second variable, the scales or None where all are 1) of fast group i of colour k,
        or None if the other messages are not runs of entries (cached)."""
        plan = self._edge_plans.get((k, i))
        if plan is None:
            g = self.batch.colours[k].fast[i]
            other_at = np.ascontiguousarray(g.other[:, 0], dtype=np.int64)
            plan = False
            if not len(g.other) or np.array_equal(
                    g.other, other_at[:, None] + np.arange(g.other.shape[1])):
                stored = self._stored[g.pair_group]
                plan = (cpu_kernels.Indices(other_at),
                        g.pairs if stored is None else stored[1][g.pairs],
                        cpu_kernels.Indices(g.transposed),
                        None if self._unit_fast[k][i] else np.ascontiguousarray(g.scale))
            self._edge_plans[k, i] = plan
        return plan or None

    @staticmethod
    def _edge_products(tables, weights) -> np.ndarray:
        """Each edge's table times its weights (tables from _split_tables): table @ w where r
        picks a row, w @ table where it picks a column."""
        rows, by_row, columns, by_column = tables
        if not len(columns):
            return _products(by_row, weights, False)
        if not len(rows):
            return _products(by_column, weights, True)
        total = np.empty((len(weights), max(by_row.shape[1], by_column.shape[2])))
        total[rows] = _products(by_row, weights[rows], False)
        total[columns] = _products(by_column, weights[columns], True)
        return total

    @staticmethod
    def _generic_mu(g, fhat, lam) -> np.ndarray:
        values = fhat[g.grouped] - lam[g.own][:, :, None]        # (E, n_r, k)
        if g.use_max:
            return values.max(axis=2)
        return _log_sum_exp(values, g.scale[:, None, None], axis=2)

    def sweep(self, state: FlatState, change: bool = True) -> float:
        """One sweep: every colour once, in order; returns the largest message change (see
        update_colour).  Its products stay in the state for the read-outs (_saved_sums)."""
        state.products = {}
        return max((self.update_colour(state, k, change, whole=True)
                    for k in range(len(self.batch.colours))), default=0.0)

    # --- read-outs ------------------------------------------------------------------------
    def _pair_sums(self, state: FlatState, group: int, beliefs=None):
        """For each fast pair: w_a, w_b = exp(lambda / (eps c_p)) and sum_ab table * w_a * w_b,
        in the order of the tables' rows (the pairs' unless _storage reorders them).

        With the pair's fhat = f_p + lambda_a + lambda_b (it has no parents), its log-partition is
        top + eps c_p log(that sum), and its belief is table * w_a * w_b / sum.  Given the
        batch's `beliefs` and a group with views, the pairs' beliefs are written too, block by
        block right after their sums: the tables are read from memory once (see _pair_beliefs);
        with the CPU kernels, weights, sums and beliefs in one pass, and w_a, w_b then None
        (_fused_pair_readout).
        """
        g, pt = self.batch.pair_groups[group], state.pair_tables[group]
        lam = state.messages
        if beliefs is not None:   # (not with shared tables: _fused_pair_readout says)
            fused = self._fused_pair_readout(state, group, beliefs)
            if fused is not None:
                return fused
        in_rows = pt.stored is not None
        message_a, message_b, scale = self._stored_pairs[group] if in_rows \
            else (g.message_a, g.message_b, g.scale)
        kernels = cpu_kernels.library()
        starts = None if kernels is None else self._weight_starts(group, in_rows)
        if starts is not None:   # one pass, one run of exps each (cpu_kernels.c)
            a_at, b_at, scales = starts
            w_a, w_b = np.empty(message_a.shape), np.empty(message_b.shape)
            cpu_kernels.pair_weights(kernels, lam, a_at, b_at, message_a.shape[1],
                                     message_b.shape[1], scales, w_a, w_b)
        elif self._unit_scale[group]:   # (x / 1 is x)
            w_a, w_b = _exp(lam[message_a]), _exp(lam[message_b])
        else:
            w_a, w_b = _exp(lam[message_a] / scale[:, None]), _exp(lam[message_b] / scale[:, None])
        saved = self._saved_sums(state, group, w_a, w_b, in_rows)
        if beliefs is not None and pt.variant is None and self._pair_views[group] is not None:
            total = self._view_pair_beliefs(state, group, w_a, w_b, saved, beliefs)
        elif saved is not None:
            total = saved
        elif pt.variant is None or in_rows:
            table = pt.table   # ((S,) P, n_a, n_b)
            total = (_products(table, w_b.reshape(*table.shape[:-2], -1), False).reshape(
                w_a.shape) * w_a).sum(axis=1)
        else:
            total = np.empty(len(w_a))
            for v, pairs in state.sharing.variant_rows[group]:
                total[pairs] = (_rows_matmul(w_b[pairs], pt.table[v].T) * w_a[pairs]).sum(axis=1)
        return w_a, w_b, total

    def _fused_pair_readout(self, state: FlatState, group: int, beliefs):
        """_pair_sums with the beliefs of a group with views or in _storage's rows in one kernel
        pass (weights, sums from the last sweep's products, beliefs: cpu_kernels.pair_readout,
        the same numbers as the three calls it replaces), as (None, None, the sums in the
        tables' row order): the read-out needs no weights once the group's beliefs are written;
        None where it cannot run."""
        kernels = cpu_kernels.library()
        pt = state.pair_tables[group]
        in_rows = pt.stored is not None
        if kernels is None or state.sharing is not None or not state.products \
                or not (in_rows or self._pair_views[group] is not None):
            return None
        starts, plan = self._weight_starts(group, in_rows), self._readout_plan(group)
        if starts is None or plan is None:
            return None
        keys, readout = plan
        products = [state.products.get(key) for key in keys]
        if any(p is None or not p.flags.c_contiguous for p in products):
            return None
        g = self.batch.pair_groups[group]
        buffer, table_at, entry_at, order = self._kernel_offsets(group, pt.table)
        a_at, b_at, scales = starts
        total = np.empty(len(g.entries))
        cpu_kernels.pair_readout(kernels, readout, state.messages, a_at, b_at, scales, products,
                                 buffer, table_at, beliefs, entry_at, order, total,
                                 streamed=_streamed(buffer))
        if in_rows:
            self._low_row_beliefs(state, group, np.flatnonzero(total < _UNDERFLOW), beliefs)
        else:
            self._low_pair_beliefs(state, group, total, self._view(beliefs, group))
        return None, None, total

    def _readout_plan(self, group: int):
        """(the products' keys, cpu_kernels.PairReadout) of pair group `group` from its last
        updates (_last_update), its pairs in the tables' row order (their own, or _storage's);
        None without them (cached)."""
        if group not in self._readout_plans:
            last = self._last_updates[group]
            plan = None
            if last is not None:
                g = self.batch.pair_groups[group]
                source, edge, second = np.zeros((3, len(g.entries)), np.int64)
                for m, (_, _, _, rows, edges, flag) in enumerate(last):
                    source[rows], edge[rows], second[rows] = m, edges, int(flag)
                plan = ([(k, i) for k, i, *_ in last],
                        cpu_kernels.PairReadout(source, edge, second, *self._pair_shape(g)))
            self._readout_plans[group] = plan
        return self._readout_plans[group]

    def _weight_starts(self, group: int, in_rows: bool):
        """pair_weights' (a_at, b_at, scales or None where all are 1) of pair group `group`, its
        pairs in the tables' row order if `in_rows`; None where a message's entries are not a
        run (cached)."""
        key = (group, in_rows)
        if key not in self._weight_plans:
            g = self.batch.pair_groups[group]
            message_a, message_b, scale = self._stored_pairs[group] if in_rows \
                else (g.message_a, g.message_b, g.scale)
            plan = None
            if len(message_a) and all(np.array_equal(m, m[:, :1] + np.arange(m.shape[1]))
                                      for m in (message_a, message_b)):
                plan = (cpu_kernels.Indices(message_a[:, 0]), cpu_kernels.Indices(message_b[:, 0]),
                        None if self._unit_scale[group] else np.ascontiguousarray(scale))
            self._weight_plans[key] = plan
        return self._weight_plans[key]

    def _pair_f(self, state: FlatState, group: int, pairs: np.ndarray) -> np.ndarray:
        """f of some fast pairs of pair group `group`, (len(pairs), n_a, n_b)."""
        g = self.batch.pair_groups[group]
        if state.sharing is None:
            f = state.potentials[g.entries[pairs]]
        else:
            f = state.source[state.sharing.tables[group][state.sharing.table_of(group, pairs)]]
        return f.reshape(len(pairs), *self._pair_shape(g))

    def _pair_fhat(self, state: FlatState, group: int, pairs: np.ndarray) -> np.ndarray:
        """fhat of some fast pairs, (len(pairs), n_a, n_b): the exact path for extreme values."""
        g, lam = self.batch.pair_groups[group], state.messages
        f = self._pair_f(state, group, pairs)
        return f + lam[g.message_a[pairs]][:, :, None] + lam[g.message_b[pairs]][:, None, :]

    def region_values(self, state: FlatState) -> list[np.ndarray]:
        """fhat of every region but the fast pairs, an (R, n) block per regions_by_size entry.

        Fresh from the potentials and messages (no incremental rounding reaches the read-outs),
        and only for the entries read: fast pairs' fhat is never formed."""
        b, lam = self.batch, state.messages
        k = len(self._readout_entries)
        kernels = cpu_kernels.library()
        if kernels is not None:   # one pass (cpu_kernels.c)
            flat = np.empty(k)
            cpu_kernels.region_values(kernels, self._region_sums, state.readout, lam, flat)
        else:
            flat = (state.readout
                    + np.bincount(self._compact_parent, lam[b.parent_entry_message], k)
                    - np.bincount(self._compact_child, lam, k))
        return [flat[where].reshape(shape) for where, shape in self._blocks]

    @functools.cached_property
    def _region_sums(self):
        """cpu_kernels.region_values' index arrays (checked once)."""
        b = self.batch
        return cpu_kernels.RegionSums(len(self._readout_entries), self._compact_parent,
                                      b.parent_entry_message, self._compact_child, b.num_messages)

    @functools.cached_property
    def _region_readout(self):
        """Per regions_by_size block, (cpu_kernels.RegionReadout, its regions' scales or None
        where all are 1, their first entries), if every region read out has eps c_r > 0,
        consecutive entries and messages in runs; else None."""
        plan, start = [], 0
        for entries, scale, _ in self.batch.regions_by_size:
            rows, n = entries.shape
            if not (np.all(scale > 0) and np.array_equal(entries, entries[:, :1] + np.arange(n))):
                return None
            runs = cpu_kernels.RegionReadout.of(self._region_sums, start, rows, n)
            if runs is None:
                return None
            plan.append((runs, None if np.all(scale == 1.0)
                         else np.ascontiguousarray(scale, dtype=np.float64),
                         cpu_kernels.Indices(entries[:, 0])))
            start += entries.size
        return plan

    def _fused_region_readout(self, state: FlatState, beliefs):
        """region_values, region_softmax and the regions' beliefs in one kernel pass per block
        (cpu_kernels.region_readout, the same numbers), the beliefs written into `beliefs`;
        returns region_softmax's list without the beliefs, or None where it cannot run."""
        kernels = cpu_kernels.library()
        plan = self._region_readout if kernels is not None and state.sharing is None else None
        if plan is None:
            return None
        out = []
        for runs, scale, belief_at in plan:
            log_partition = np.empty(runs.rows)
            cpu_kernels.region_readout(kernels, runs, state.readout, state.messages, scale,
                                       beliefs, belief_at, log_partition)
            out.append((np.ones(runs.rows, bool), None, log_partition))
        return out

    def pair_sums(self, state: FlatState) -> list[tuple]:
        """_pair_sums of every pair group (shared by the dual and the beliefs)."""
        return [self._pair_sums(state, group) for group in range(len(self.batch.pair_groups))]

    def region_softmax(self, values) -> list[tuple]:
        """Per regions_by_size block, for its regions with eps c_r > 0: (which rows, their beliefs
        exp(fhat_r / (eps c_r)) normalised, their eps c_r log sum exp(fhat_r / (eps c_r))); the
        beliefs and the dual share it."""
        out = []
        kernels = cpu_kernels.library()
        for (_, scale, _), block in zip(self.batch.regions_by_size, values):
            direct = scale > 0
            every = bool(direct.all())   # (then no copies of the rows)
            z, mine = (block, scale) if every else (block[direct], scale[direct])
            if kernels is not None and z.flags.c_contiguous:   # one pass (cpu_kernels.c)
                unit = bool(np.all(mine == 1.0))
                out.append((direct, *cpu_kernels.row_softmax(
                    kernels, z, None if unit else np.ascontiguousarray(mine, dtype=np.float64))))
                continue
            if np.all(mine == 1.0):   # (z / 1 is z: the same bits without the division)
                peak = _row_max(z)[:, None]
                z = z - peak
            else:
                z = z / mine[:, None]
                peak = _row_max(z)[:, None]
                z -= peak
            _exp(z, out=z)
            total = _row_sum(z)[:, None]
            z /= total
            out.append((direct, z, mine * (peak[:, 0] + np.log(total[:, 0]))))
        return out

    def dual(self, state: FlatState, values=None, sums=None, softmax=None) -> np.ndarray:
        """D(lambda) per sample: sum_r eps c_r log sum exp(fhat_r / (eps c_r)) (max where eps c_r = 0)."""
        values = self.region_values(state) if values is None else values
        sums = self.pair_sums(state) if sums is None else sums
        softmax = self.region_softmax(values) if softmax is None else softmax
        kinds, runs = self._dual_plan
        per_region = []
        for (scale, every, zero, negative), block, (direct, _, log_partition) in zip(
                kinds, values, softmax):
            if every:   # (every row's term is its log partition)
                per_region.append(log_partition)
                continue
            out = np.empty(len(block))
            out[direct] = log_partition
            if len(zero):   # (the max of rows with eps c_r > 0 is not read: not formed)
                out[zero] = _row_max(block[zero])
            if len(negative):
                out[negative] = _log_sum_exp(block[negative], scale[negative, None], axis=1)
            per_region.append(out)
        for group, (g, pt, (_, _, total)) in enumerate(zip(self.batch.pair_groups,
                                                           state.pair_tables, sums)):
            if pt.stored is not None:   # (sums in the tables' row order)
                total = _spread(total, pt.stored)
            with np.errstate(divide="ignore"):
                out = _log(total)
            if not self._unit_scale[group]:
                out *= g.scale
            out += pt.pair_top()
            low = np.flatnonzero(total < _UNDERFLOW)
            if len(low):
                flat = self._pair_fhat(state, group, low).reshape(len(low), -1)
                out[low] = _log_sum_exp(flat, g.scale[low, None], axis=1)
            per_region.append(out)
        # each array's sums per run, then the arrays in turn: a sample's bits do not depend
        # on which other samples the batch (or the range) holds
        dual = np.zeros(self.batch.num_samples)
        for terms, (starts, owners) in zip(per_region, runs):
            if len(terms):
                sums = np.add.reduceat(terms, starts)
                if owners is None:
                    dual += sums
                else:
                    np.add.at(dual, owners, sums)
        return dual

    @functools.cached_property
    def _dual_plan(self):
        """Per regions_by_size block (its scales, all of them > 0, the rows with eps c_r = 0 and
        < 0); and per array of dual terms in the order dual() lists them (the blocks', then the
        pair groups'), where each sample's run of terms starts and whose it is (None: every
        sample's, in order).  A sample's terms in an array are one run: the batch tiles each
        template's regions sample by sample."""
        kinds = [(scale, bool(np.all(scale > 0)), np.flatnonzero(scale == 0),
                  np.flatnonzero(scale < 0)) for _, scale, _ in self.batch.regions_by_size]
        runs = []
        for sample in [sample for _, _, sample in self.batch.regions_by_size] \
                + [g.sample for g in self.batch.pair_groups]:
            starts = np.flatnonzero(np.diff(sample, prepend=-1))
            owners = sample[starts]
            runs.append((starts, None if np.array_equal(owners, np.arange(
                self.batch.num_samples)) else owners))
        return kinds, runs

    def _exact_pair_beliefs(self, state: FlatState, group: int, pairs: np.ndarray) -> np.ndarray:
        """Beliefs of some fast pairs from their fhat: the path for sums that underflowed."""
        g = self.batch.pair_groups[group]
        z = self._pair_fhat(state, group, pairs).reshape(len(pairs), -1) / g.scale[pairs, None]
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).reshape(len(pairs), *self._pair_shape(g))

    def beliefs(self, state: FlatState, values=None, sums=None, softmax=None,
                out=None, done=(), regions: bool = True) -> np.ndarray:
        """b_r ∝ exp(fhat_r / (eps c_r)) where eps c_r > 0; otherwise marginalised from a parent
        (written into `out` if given; the fast pairs of the groups in `done` are already, and
        with `regions` False the regions read out by region_softmax).

        With shared tables the fast pairs' entries are NaN: their beliefs are not formed (see
        ConvexBP.table_beliefs)."""
        if regions or state.sharing is not None:
            values = self.region_values(state) if values is None else values
            softmax = self.region_softmax(values) if softmax is None else softmax
        if state.sharing is not None:
            spread = state.sharing.spread(self.rest_beliefs(state, values, softmax))
            if out is None:
                return spread
            out[:] = spread
            return out
        # every entry is written below: direct regions, fast pairs, then the regions whose belief
        # is marginalised from a parent (filling a batch's worth of zeros first took 4 ms of
        # 1000 words' read-outs)
        beliefs = np.empty(self.batch.num_potentials) if out is None else out
        for (entries, _, _), (direct, normalised, _), consecutive in zip(
                self.batch.regions_by_size, softmax if regions else (), self._consecutive):
            if not direct.all():
                beliefs[entries[direct]] = normalised
            elif consecutive:   # a region's entries are consecutive: rows of a sliding window
                _window_rows(beliefs, entries.shape[1])[entries[:, 0]] = normalised
            else:
                beliefs[entries] = normalised
        sums = self.pair_sums(state) if sums is None else sums
        for group, (entries, pt, (w_a, w_b, total)) in enumerate(zip(
                self._pair_entries, state.pair_tables, sums)):
            if group in done:
                continue
            if self._pair_views[group] is not None:   # straight into the output, block by block
                self._view_pair_beliefs(state, group, w_a, w_b, total, beliefs)
                continue
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                a = w_a / total[:, None]
            low = np.flatnonzero(total < _UNDERFLOW)   # (rows of the tables, as the sums)
            if pt.stored is None:
                b = state.workspace.get(("beliefs", group), pt.table.shape)
                _scale_tables(pt.table[None], a[None], w_b[None], b[None])
                if len(low):
                    b[low] = self._exact_pair_beliefs(state, group, low)
                beliefs[entries] = b.ravel()
                continue
            kernels = cpu_kernels.library()
            if kernels is not None:   # one pass over the tables, straight into the output
                buffer, table_at, entry_at, order = self._kernel_offsets(group, pt.table)
                cpu_kernels.pair_beliefs(kernels, buffer, table_at, beliefs, entry_at,
                                         *pt.table.shape[1:], w_a, w_b, total, order)
                self._low_row_beliefs(state, group, low, beliefs)
                continue
            # block by block in the cache, each row then into its pair's consecutive entries:
            # rows of a sliding window over the beliefs (a copy per pair, no index per entry)
            first = self._stored[group][2]
            size = pt.table[0].size
            windows = _window_rows(beliefs, size)
            step = max(1, _BLOCK_ENTRIES // size)
            block = state.workspace.get(("beliefs", group), (step, *pt.table.shape[1:]))
            for s in range(0, len(first), step):
                rows = slice(s, s + step)
                mine = block[:len(first[rows])]
                _scale_tables(pt.table[None, rows], a[None, rows], w_b[None, rows], mine[None])
                windows[first[rows]] = mine.reshape(len(mine), size)
            self._low_row_beliefs(state, group, low, beliefs)
        for entries, position, parent in self._levels:
            beliefs[entries] = np.bincount(position, beliefs[parent], len(entries))
        return beliefs

    def _view_pair_beliefs(self, state: FlatState, group: int, w_a, w_b, total, beliefs):
        """A one-template group's pair beliefs table * (w_a / sum) w_b^T into the batch's
        `beliefs` vector, through its (S, P, n_a, n_b) view `out`: by the CPU kernels where they
        are built (cpu_kernels.pair_beliefs), else a block of samples at a time (the tables are
        read from memory once); `total` the pairs' sums, or None: then formed here.
        Returns the sums.  Slot-major tables are multiplied slot by slot into a block in the
        cache, which is then copied to the samples' entries: reading the tables in sample order
        (from seven places at once) took 6.4 against 4.5 ms for 1000 words, measured."""
        table = state.pair_tables[group].table
        out = self._view(beliefs, group)
        samples, per = out.shape[:2]
        sums = np.empty(len(w_a)) if total is None else total
        kernels = cpu_kernels.library()
        if kernels is not None:   # one pass over the tables, straight into the output
            if total is None:   # (as _pair_sums forms them: the same bits)
                sums[:] = (_products(table, w_b.reshape(samples, per, -1), False)
                           * w_a.reshape(samples, per, -1)).sum(axis=2).ravel()
            buffer, table_at, entry_at, order = self._kernel_offsets(group, table)
            cpu_kernels.pair_beliefs(kernels, buffer, table_at, beliefs, entry_at, *out.shape[2:],
                                     w_a, w_b, sums, order)
            self._low_pair_beliefs(state, group, sums, out)
            return sums
        by_slot = not table.flags.c_contiguous
        step = max(1, _BLOCK_ENTRIES // max(1, out[0].size))
        work = state.workspace.get(("outer", group), (per, min(step, samples), *out.shape[2:])
                                   if by_slot else (min(step, samples), *out.shape[1:]))
        for s in range(0, samples, step):
            rows, block = slice(s * per, (s + step) * per), table[s:s + step]
            w_a_block = w_a[rows].reshape(len(block), per, -1)
            w_b_block = w_b[rows].reshape(len(block), per, -1)
            if total is None:
                sums[rows] = (_products(block, w_b_block, False) * w_a_block).sum(axis=2).ravel()
            sums_block = sums[rows].reshape(len(block), per, 1)
            if by_slot:   # (the weights in the block's slot-major order too: einsum is slow on
                # strided operands)
                mine = work[:, :len(block)]
                a, b = (state.workspace.get(("weights", group, side), (per, work.shape[1], n))
                        [:, :len(block)] for side, n in enumerate(out.shape[2:]))
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    np.divide(w_a_block.transpose(1, 0, 2), sums_block.transpose(1, 0, 2), out=a)
                b[...] = w_b_block.transpose(1, 0, 2)
                _scale_tables(block.transpose(1, 0, 2, 3), a, b, mine)
                out[s:s + step] = mine.transpose(1, 0, 2, 3)
            else:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    a = w_a_block / sums_block
                _scale_tables(block, a, w_b_block, out[s:s + step], work[:len(block)])
        self._low_pair_beliefs(state, group, sums, out)
        return sums

    def _low_row_beliefs(self, state: FlatState, group: int, low, beliefs):
        """The beliefs of the rows `low` of a group in _storage's rows (their sums underflowed),
        from their fhat, into the batch's `beliefs` (a row per pair: its entries are a run)."""
        if len(low):
            first, size = self._stored[group][2], self.batch.pair_groups[group].entries.shape[1]
            _window_rows(beliefs, size)[first[low]] = self._exact_pair_beliefs(
                state, group, state.pair_tables[group].stored[low]).reshape(len(low), size)

    def _low_pair_beliefs(self, state: FlatState, group: int, total, out):
        """The beliefs of the pairs whose sum underflowed, from their fhat, into the view `out`."""
        low = np.flatnonzero(total < _UNDERFLOW)
        if len(low):
            out[low // out.shape[1], low % out.shape[1]] = self._exact_pair_beliefs(state, group,
                                                                                    low)

    def rest_beliefs(self, state: FlatState, values=None, softmax=None) -> np.ndarray:
        """With shared tables: the beliefs of the entries that are not fast pairs (sharing.rest),
        without a full-length vector."""
        sharing = state.sharing
        if sharing is None:
            raise ValueError("rest_beliefs: this state has no shared tables (start(..., sharing=))")
        values = self.region_values(state) if values is None else values
        softmax = self.region_softmax(values) if softmax is None else softmax
        beliefs = np.zeros(len(sharing.rest))
        for where, (direct, normalised, _) in zip(sharing.rest_blocks, softmax):
            beliefs[where[direct]] = normalised
        for child, parent in sharing.rest_levels:
            beliefs += np.bincount(child, beliefs[parent], len(beliefs))
        return beliefs

    def pair_exports(self, state: FlatState, sums=None) -> list[tuple]:
        """With shared tables, per pair group what ConvexBP sums per table over the whole batch:
        (a = w_a / sum, w_b, the pairs whose sum underflowed, their beliefs from fhat)."""
        sums = self.pair_sums(state) if sums is None else sums
        out = []
        for group, (w_a, w_b, total) in enumerate(sums):
            low = np.flatnonzero(total < _UNDERFLOW)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                a = w_a / total[:, None]
            out.append((a, w_b, low, self._exact_pair_beliefs(state, group, low) if len(low)
                        else None))
        return out

    def readout(self, state: FlatState, beliefs_out=None, exports=False):
        """A run's read-outs from one computation of the regions' fhat and the pairs' sums:
        (the dual per sample, with shared tables the rest beliefs, with `exports` pair_exports);
        without shared tables the beliefs are written into `beliefs_out` if given."""
        fused = beliefs_out if state.sharing is None else None
        softmax = None if fused is None else self._fused_region_readout(state, fused)
        # (read out by the fused pass: no block of fhat is formed, the dual takes the log
        # partitions alone)
        values = self.region_values(state) if softmax is None else [None] * len(self._blocks)
        sums = [self._pair_sums(state, group, fused) for group in range(len(self.batch.pair_groups))]
        regions = softmax is None
        softmax = self.region_softmax(values) if regions else softmax
        dual = self.dual(state, values, sums, softmax)
        if state.sharing is None:
            if beliefs_out is not None:   # (groups with views, and those the fused pass wrote)
                done = {g for g, (v, (w_a, _, _)) in enumerate(zip(self._pair_views, sums))
                        if v is not None or w_a is None}
                self.beliefs(state, values, sums, softmax, out=beliefs_out, done=done,
                             regions=regions)
            return dual, None, None
        return (dual, self.rest_beliefs(state, values, softmax),
                self.pair_exports(state, sums) if exports else None)
