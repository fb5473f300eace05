"""Convex belief propagation on a GraphBatch, on the cores it is given.

``ConvexBP`` splits the batch into contiguous ranges of samples, one per thread
(``threads``, else ``torch.get_num_threads()``, which the trainer sets from ``run.threads``), and
runs an engine per range in a thread pool: samples are independent, so a range sweeps, starts
and reads out on its own, and numpy releases the GIL inside its loops.  Every number is computed
per sample by the same operations whatever the range, so the results are bitwise independent of
the thread count (tests/test_threads.py); the few sums over the whole batch (per shared table)
are formed here, over the whole batch, in one fixed order.

Engines (docs/design.md §2 has the formulas):

* ``FlatBP`` (flat.py): any region graph, flattened to index arrays; with shared pair tables;
  batches of one template (2nd-order words, grids) read their pair tables through views.
* ``DenseBP`` (dense.py): batches of one dense binary pairwise graph (the tagging task's fully
  connected graph), on (S, V, V) arrays, for any counting numbers whose pairs' are > 0.

A run with tol = 0 (blend's few sweeps) is one task per range: start, sweeps and read-outs; with
tol > 0 the ranges meet after every sweep, so all stop at the same sweep.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..graph.batch import GraphBatch
from . import cpu_kernels
from .dense import DenseBP, dense_plan
from .flat import FlatBP, PairSharing
from .threads import blas_on_one_thread, engine_threads, run_parallel

# a range of samples is worth a thread if each colour updates at least this many message entries
# in it: every numpy call hands the GIL over, so small calls on two threads take longer than on
# one (measured, run of 10 sweeps on 1 and 2 ranges: fully connected 38 binary, 7400 entries a
# colour (batch 100), 1.44 against 2.54 ms; 29600 (batch 400) 6.04 against 5.78; 74000 (batch
# 1000) 16.1 against 10.8; 2nd-order words, 12133 (batch 100) 1.16 against 1.44, 121333 (batch
# 1000) 13.4 against 7.7; 32 x 32 grids of 5 states, 19840 (batch 2) 0.97 against 0.92)
_MIN_PART_ENTRIES = 20000
# the dense engine on the CPU kernels makes a few calls a sweep, none per variable, so smaller
# ranges pay (measured, run of 10 sweeps per sweep on 1 and 2 ranges at 2 threads, 38 binary:
# batch 100, 7400 entries a colour, 1.03 against 0.70 ms; batch 40, 2960, 0.54 against 0.43;
# batch 20, 1480, 0.30 against 0.29; batch 10, 0.16 against 0.15)
_MIN_DENSE_KERNEL_PART_ENTRIES = 1500


@dataclass
class BPResult:
    dual: np.ndarray            # (S,) the dual D(lambda) of each sample
    messages: np.ndarray        # (M,) final messages (store them per sample to warm-start)
    sweeps: int                 # sweeps run
    max_change: float           # largest message change in the last sweep (inf if none ran)
    converged: bool
    table_beliefs: list | None = None   # with shared tables: ConvexBP.table_beliefs
    rest_beliefs: np.ndarray | None = None   # with shared tables: beliefs at sharing.rest
    sharing: PairSharing | None = None
    formed: np.ndarray | None = None   # (N,) beliefs, once formed
    # wall seconds of the run's start, sweeps, read-outs (beliefs and dual) and the messages'
    # export into `messages` (the slowest range's, each)
    seconds: dict = field(default_factory=dict)

    @property
    def beliefs(self) -> np.ndarray:
        """(N,) in the batch's potential layout; with shared tables NaN at the fast pairs, formed
        from rest_beliefs when first read (training never reads them: filling the NaN vector took
        about 60-100 us of a 50-word step's read-outs, under a line profiler)."""
        if self.formed is None:
            self.formed = self.sharing.spread(self.rest_beliefs)
        return self.formed


class _Part:
    """Samples [s0, s1) of the batch: their potential and message ranges and their engines (the
    flat one built when first used)."""

    def __init__(self, batch: GraphBatch, s0: int, s1: int, flat=None, uniform=None, dense=None):
        self.s0, self.s1 = int(s0), int(s1)
        self.p0, self.p1 = int(batch.potential_offset[s0]), int(batch.potential_offset[s1])
        self.m0, self.m1 = int(batch.message_offset[s0]), int(batch.message_offset[s1])
        self._graphs, self._uniform, self.dense = batch.graphs[s0:s1], uniform, dense
        if flat is not None:
            self.flat = flat

    @functools.cached_property
    def flat(self) -> FlatBP:
        return FlatBP(GraphBatch(self._graphs), uniform=self._uniform)

    def engine(self, sharing):
        """The engine a run takes: the dense one unless there is none or tables are shared."""
        return self.dense if self.dense is not None and sharing is None else self.flat


class BPState:
    """A run's state: one engine state per range of samples.  `messages` is the whole batch's
    (M,) vector; each range's messages are a view of it."""

    def __init__(self, parts, engines, states, lam, sharing):
        self.parts, self.engines, self.states = parts, engines, states
        self._messages, self.sharing = lam, sharing

    @property
    def messages(self) -> np.ndarray:
        for state in self.states:   # ranges that keep their messages in another form write them
            state.messages
        return self._messages


class ConvexBP:
    """Convex BP for one GraphBatch (build once per batch, run many times), on `threads` threads
    (default: torch.get_num_threads())."""

    def __init__(self, batch: GraphBatch, threads: int | None = None):
        self.batch = batch
        self.threads = engine_threads(threads)
        self._flat = FlatBP(batch)
        self._dense = dense_plan(batch.template)
        self._running = threading.Lock()   # held by the run that uses the engines' Workspaces
        self._returned = {}   # result arrays of the last run, reused once nobody holds them

    def _result_array(self, key, size: int, reuse: bool) -> np.ndarray:
        """An (size,) array for a run's result: the last run's if nothing but this engine holds it
        (no result, view or tensor of it is alive), else a fresh one.  A fresh array costs the
        kernel's zeroing of its pages at the first write: 5 ms for 1000 words' 38 MB of beliefs
        (np.zeros is no cheaper: its pages are zeroed at the first write too)."""
        if not reuse:
            return np.empty(size)
        held = self._returned.get(key)
        # (references: the dict's, `held` and getrefcount's argument)
        if held is None or held.shape != (size,) or sys.getrefcount(held) > 3:
            held = self._returned[key] = np.empty(size)
        return held

    # --- ranges of samples ----------------------------------------------------------------
    @functools.cached_property
    def _whole(self) -> _Part:
        return self._part(0, self.batch.num_samples, self._flat)

    def _part(self, s0, s1, flat=None) -> _Part:
        dense = None if self._dense is None else DenseBP(self._dense, s1 - s0,
                                                         len(self.batch.colours))
        return _Part(self.batch, s0, s1, flat, self._flat.uniform, dense)

    @functools.cached_property
    def _parts(self) -> list[_Part]:
        """The ranges the batch runs in: one per thread, balanced by entries, unless a range
        would update too few entries per colour (_MIN_PART_ENTRIES, or for the dense engine on
        the CPU kernels _MIN_DENSE_KERNEL_PART_ENTRIES) or be updated differently from the whole
        batch (FlatBP.signature)."""
        b = self.batch
        whole = [self._whole]
        work = np.diff(b.potential_offset) + np.diff(b.message_offset)
        per_colour = b.num_messages // max(len(b.colours), 1)
        least = _MIN_DENSE_KERNEL_PART_ENTRIES if self._dense is not None \
            and cpu_kernels.library() is not None else _MIN_PART_ENTRIES
        count = min(self.threads, b.num_samples, per_colour // max(least, 1))
        if count < 2:
            return whole
        cumulative = np.cumsum(work)
        cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, count) / count) + 1
        bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, b.num_samples - 1),
                                           [b.num_samples]]))
        parts = [self._part(s0, s1) for s0, s1 in zip(bounds[:-1], bounds[1:])]
        if b.template is None:   # ranges of one template are updated like the whole batch
            signature = self._flat.signature()
            for part in parts:
                binary, colours = part.flat.signature()
                if binary != signature[0] or colours != signature[1][:len(colours)]:
                    return whole
        return parts

    def _each(self, parts, task) -> list:
        """task(i, part) for every range, in parallel."""
        return run_parallel([functools.partial(task, i, part) for i, part in enumerate(parts)])

    # --- shared tables --------------------------------------------------------------------
    def sharing(self, source_index, source_size: int) -> PairSharing | None:
        """The shared tables of the fast pairs if potentials = source[source_index] (see
        FlatBP.sharing), with each range's own view of them; None where they cannot be used."""
        full = self._flat.sharing(source_index, source_size)
        if full is None or len(self._parts) == 1:
            return full
        source_index = np.asarray(source_index, dtype=np.int64)
        b, parts, positions = self.batch, [], []
        first = [g.entries[:, 0] for g in b.pair_groups]
        order = [np.argsort(f) for f in first]
        shapes = [(g.message_a.shape[1], g.message_b.shape[1]) for g in b.pair_groups]
        for part in self._parts:
            mine = part.flat.sharing(source_index[part.p0:part.p1], source_size, force=True)
            if mine is None:   # a range cannot share: run the batch as one range
                return full
            parts.append(mine)
            where = []
            for g in part.flat.batch.pair_groups:   # each pair's place in the batch's group
                group = shapes.index((g.message_a.shape[1], g.message_b.shape[1]))
                at = np.searchsorted(first[group], g.entries[:, 0] + part.p0, sorter=order[group])
                where.append((group, order[group][at]))
            positions.append(where)
        return dataclasses.replace(full, parts=parts, part_pairs=positions)

    # --- state ----------------------------------------------------------------------------
    def _inputs(self, potentials, messages, sharing, reuse: bool = False):
        """(theta, the run's messages array (each range fills its part: _part_start), the
        messages given or None, its ranges); `reuse`: the messages may go into the last run's
        array (see _result_array)."""
        b = self.batch
        theta = np.ascontiguousarray(potentials, dtype=np.float64)
        expected = b.num_potentials if sharing is None else sharing.source_size
        if theta.shape != (expected,):
            raise ValueError(f"potentials: expected a flat vector of {expected} entries "
                             f"for this batch{' (its source)' if sharing else ''}, "
                             f"got shape {theta.shape}")
        if messages is not None:
            messages = np.ascontiguousarray(messages, dtype=np.float64)
            if messages.shape != (b.num_messages,):
                raise ValueError(f"messages: expected {b.num_messages} entries for this batch, "
                                 f"got shape {messages.shape}")
        lam = self._result_array("messages", b.num_messages, reuse)
        parts = self._parts
        if sharing is not None and sharing.parts is None:   # shared tables over the whole batch
            parts = [self._whole]
        return theta, lam, messages, parts

    @staticmethod
    def _part_start(part: _Part, i: int, theta, lam, messages, sweeps, sharing, reuse=False):
        """(the range's engine, its state): the engine fills the range's part of `lam` as it
        needs it (in the range's own thread), from `messages` or zeros; `reuse`: the state may
        take the engine's Workspace."""
        mine = lam[part.m0:part.m1]
        given = None if messages is None else messages[part.m0:part.m1]
        engine = part.engine(sharing)
        extra = {"workspace": engine.workspace} if reuse else {}
        if sharing is None:
            return engine, engine.start(theta[part.p0:part.p1], mine, given, sweeps, **extra)
        shared = sharing if sharing.parts is None else sharing.parts[i]
        return engine, engine.start(theta, mine, given, sweeps, shared, **extra)

    def start(self, potentials, messages=None, sweeps: int | None = None,
              sharing: PairSharing | None = None) -> BPState:
        """The state a run sweeps on; `sweeps`: how many will run, if known (the engines here do
        not need it).

        `sharing` (from ``self.sharing``): `potentials` is then the source vector it indexes."""
        theta, lam, messages, parts = self._inputs(potentials, messages, sharing)
        started = self._each(parts, lambda i, part: self._part_start(
            part, i, theta, lam, messages, sweeps, sharing))
        return BPState(parts, [e for e, _ in started], [s for _, s in started], lam, sharing)

    # --- sweeps ---------------------------------------------------------------------------
    def update_colour(self, state: BPState, k: int) -> float:
        """Update all regions of colour k; return the largest message change."""
        return max(self._each(state.parts, lambda i, part: state.engines[i].update_colour(
            state.states[i], k) if k < len(state.engines[i].batch.colours) else 0.0))

    def sweep(self, state: BPState) -> float:
        """One sweep: every colour once, in order; returns the largest message change."""
        return max(self._each(state.parts, lambda i, part: state.engines[i].sweep(state.states[i])))

    # --- read-outs ------------------------------------------------------------------------
    def dual(self, state: BPState) -> np.ndarray:
        """D(lambda) per sample: sum_r eps c_r log sum exp(fhat_r / (eps c_r)) (max where eps c_r = 0)."""
        out = np.empty(self.batch.num_samples)

        def task(i, part):
            out[part.s0:part.s1] = state.engines[i].dual(state.states[i])
        self._each(state.parts, task)
        return out

    def beliefs(self, state: BPState) -> np.ndarray:
        """b_r ∝ exp(fhat_r / (eps c_r)) where eps c_r > 0; otherwise marginalised from a parent.

        With shared tables the fast pairs' entries are NaN: their beliefs are not formed (see
        table_beliefs)."""
        out = np.empty(self.batch.num_potentials)
        self._each(state.parts, lambda i, part: state.engines[i].beliefs(
            state.states[i], out=out[part.p0:part.p1]))
        return out

    def rest_beliefs(self, state: BPState) -> np.ndarray:
        """With shared tables: the beliefs of the entries that are not fast pairs (sharing.rest),
        without a full-length vector."""
        if state.sharing is None:
            raise ValueError("rest_beliefs: this state has no shared tables (start(..., sharing=))")
        return np.concatenate(self._each(state.parts, lambda i, part: state.engines[i].rest_beliefs(
            state.states[i])))

    def table_beliefs(self, state: BPState) -> list[np.ndarray]:
        """With shared tables: per pair group, (T, n_a, n_b) the sum of the beliefs of the pairs
        that use each table (see _table_sums)."""
        if state.sharing is None:
            raise ValueError("table_beliefs: this state has no shared tables (start(..., sharing=))")
        exports = self._each(state.parts, lambda i, part: state.engines[i].pair_exports(
            state.states[i]))
        return self._table_sums(state.sharing, state.states[0].source, exports)

    def _table_sums(self, sharing: PairSharing, source, exports) -> list[np.ndarray]:
        """sum_p table * w_a w_b^T / sum_p over the pairs p of each table = table * (A^T B), the
        rows of A = w_a / sum and B = w_b stacked over those pairs: one matrix product per
        variant, over the whole batch whatever its ranges (pairs whose sum underflowed are
        added from their exact beliefs instead)."""
        with blas_on_one_thread():   # (as the ranges: see threads.py)
            return self._table_sums_of(sharing, source, exports)

    def _table_sums_of(self, sharing: PairSharing, source, exports) -> list[np.ndarray]:
        b = self.batch
        tables = self._flat.pair_tables(source, sharing)
        part_pairs = sharing.part_pairs
        out = []
        for group, (g, pt) in enumerate(zip(b.pair_groups, tables)):
            shape = (g.message_a.shape[1], g.message_b.shape[1])
            if part_pairs is None:
                a, w_b, low, exact = exports[0][group]
            else:   # place each range's pairs at their positions in the batch's group
                a, w_b = np.empty((len(g.entries), shape[0])), np.empty((len(g.entries), shape[1]))
                low, exact = [], []
                for where, mine in zip(part_pairs, exports):
                    for (into, at), (part_a, part_b, part_low, part_exact) in zip(where, mine):
                        if into == group:
                            a[at], w_b[at] = part_a, part_b
                            if len(part_low):
                                low.append(at[part_low])
                                exact.append(part_exact)
                if low:
                    low = np.concatenate(low)
                    order = np.argsort(low)
                    low, exact = low[order], np.concatenate(exact)[order]
                else:
                    low, exact = np.zeros(0, np.int64), None
            summed = np.zeros((len(sharing.tables[group]), *shape))
            for v, pairs in sharing.variant_rows[group]:
                if len(low):   # those pairs' beliefs come from the exact path below
                    pairs = np.setdiff1d(pairs, low, assume_unique=True)
                summed[sharing.variant_table[group][v]] += pt.table[v] * (a[pairs].T @ w_b[pairs])
            if len(low):
                np.add.at(summed, sharing.table_of(group, low), exact)
            out.append(summed)
        return out

    # --- a run ----------------------------------------------------------------------------
    def run(self, potentials, messages=None, max_sweeps: int = 1000, tol: float = 1e-6,
            sharing: PairSharing | None = None) -> BPResult:
        """Sweep until the largest message change is below tol or max_sweeps is reached.

        With `sharing`, `potentials` is the source vector, the result's `table_beliefs` holds
        the pairs' beliefs summed per shared table (their entries in `beliefs` are NaN) and
        `rest_beliefs` the beliefs of the other entries (sharing.rest)."""
        if max_sweeps < 0 or not tol >= 0:
            raise ValueError(f"max_sweeps = {max_sweeps} and tol = {tol} must be >= 0")
        # (a run's states stay in the run: it may reuse the arrays of the previous one, unless
        # another thread is running this engine now)
        reuse = self._running.acquire(blocking=False)
        try:
            theta, lam, messages, parts = self._inputs(potentials, messages, sharing, reuse)
        except BaseException:
            if reuse:
                self._running.release()
            raise
        b = self.batch
        dual = np.empty(b.num_samples)
        beliefs = self._result_array("beliefs", b.num_potentials, reuse) if sharing is None \
            else None
        states, engines = [None] * len(parts), [None] * len(parts)
        fixed = tol == 0 or not b.colours   # no sweep decides when the others stop
        times = [[0.0, 0.0, 0.0, 0.0] for _ in parts]

        def begin(i, part):
            start = time.perf_counter()
            engines[i], state = self._part_start(part, i, theta, lam, messages, max_sweeps,
                                                 sharing, reuse)
            states[i] = state
            middle = time.perf_counter()
            change = float("inf") if engines[i].batch.colours else 0.0
            count = max_sweeps if fixed else min(max_sweeps, 1)
            for sweep in range(count):   # (only the last sweep's change is read)
                change = engines[i].sweep(state, change=sweep == count - 1)
            times[i][0] += middle - start
            times[i][1] += time.perf_counter() - middle
            return change

        def again(i, part):
            start = time.perf_counter()
            change = engines[i].sweep(states[i])
            times[i][1] += time.perf_counter() - start
            return change

        def finish(i, part):
            start = time.perf_counter()
            dual_i, rest, exports = engines[i].readout(
                states[i], None if beliefs is None else beliefs[part.p0:part.p1], sharing is not None)
            dual[part.s0:part.s1] = dual_i
            middle = time.perf_counter()
            states[i].messages   # the range's messages into lam
            times[i][2] += middle - start
            times[i][3] += time.perf_counter() - middle
            return rest, exports

        try:
            return self._run(parts, begin, again, finish, times, lam, dual, beliefs, sharing,
                             theta, max_sweeps, tol, fixed)
        finally:
            if reuse:
                self._running.release()

    def _run(self, parts, begin, again, finish, times, lam, dual, beliefs, sharing, theta,
             max_sweeps, tol, fixed) -> BPResult:
        b = self.batch
        change = max(self._each(parts, begin))
        sweeps = min(max_sweeps, 1) if not fixed else (max_sweeps if b.colours else 0)
        if not b.colours:
            change, sweeps = 0.0, 0   # nothing sends messages: beliefs are exact already
        while sweeps < max_sweeps and change >= tol:
            change = max(self._each(parts, again))
            sweeps += 1
        outputs = self._each(parts, finish)
        result = BPResult(dual, lam, sweeps, change, converged=change < tol,
                          seconds=dict(zip(("start", "sweeps", "readout", "messages"),
                                           np.max(times, axis=0).tolist())))
        if sharing is None:
            result.formed = beliefs
        else:
            result.rest_beliefs = np.concatenate([rest for rest, _ in outputs])
            result.table_beliefs = self._table_sums(sharing, theta, [e for _, e in outputs])
            result.sharing = sharing
        return result
