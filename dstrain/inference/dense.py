"""Convex BP for batches of one dense binary pairwise graph (the tagging task's fully connected
graph over 38 labels), on (V, V, S) arrays instead of index arrays.

Variable i's update needs, for each neighbour j, only the gap g_{j->p} = lambda(1) - lambda(0) of
the message j sends into their pair p.  From i's side (f_xy = f_p(y_i = x, y_j = y), eps c_p = s,
x_j = g_{j->p} / s, docs/design.md §2):

    mu_{p->i}(1) - mu_{p->i}(0) = s log((t_10 + t_11 e^x_j) / (t_00 + t_01 e^x_j)),  t = e^(f / s)
                                = (f_11 - f_01) + s sign(w) log1p(expm1(|w|) / (1 + e^(x_j - m)))

with w = (f_10 + f_01 - f_00 - f_11) / s (the interaction, the same from either side) and
m = (f_00 - f_01) / s + min(w, 0).  The gaps are stored shifted, H[i, j, s] = h_{i->p} =
g_{i->p} - K_ij with K_ij = f_01 - f_11 (0 where there is no pair): then x_j - m = h_{j->p} / s +
max(w, 0), the same for both of p's variables, so start computes w and E = expm1(|w|) once per
pair and run (rows (2, P + 1, S), a zero row P where a dense position has no pair; W = max(w, 0)
and C = s sign(w) follow from w), and nothing cancels: the log1p's argument is >= 0.  With R_ij
= c_p / (c_i + sum of i's pairs' c), i reads column H[:, i] and writes row H[i] (both views):

    total_i = (f_i(1) - f_i(0) - sum_j K_ij) + sum_j C_ij log1p(...)_ij
    h_{i->p} = R_ij total_i - C_ij log1p(...)_ij

Pairs and diagonal entries that are no edge have K = E = C = R = 0 and stay 0.  The compiled
sweep (cpu_kernels.c) reads w and E through the pair of each position; numpy's sweep reads W, E
and C spread over (V, V) (DenseState.spread, formed on first use).  Samples with some |w| > 700
(expm1 would overflow) take the same update in log space (logaddexp), row by row.  The numbers
depend on a sample's own data only, so ranges of samples run in threads give the same bits
(bp.py).  Read-outs take the pairs' beliefs and log partitions from e^h and e^-w (see
DenseBP._pairs) and the unaries' and the messages (max-0: (min(0, -g), min(0, g))) from the gaps
g = H + K.  Inputs and outputs are samples first: they are copied transposed a block of pairs
at a time (the block's lines stay in cache).
"""
from __future__ import annotations

import functools

import numpy as np

from ..graph.region_graph import RegionGraph
from . import cpu_kernels
from .flat import FRESH, Workspace

# |w| above this takes the log-space update (expm1 overflows above 709.78)
_EXPM1_LIMIT = 700.0
# rows per block of a transposed write into a samples-first output
_BLOCK = 128


class DensePlan:
    """Template-level arrays of one dense binary pairwise graph (shared by every range)."""

    def __init__(self, graph: RegionGraph):
        V = len(graph.cardinalities)
        self.V = V
        self.pairs = np.array([graph.regions[r] for r in range(V, len(graph.regions))], np.int64)
        P = self.P = len(self.pairs)
        u, v = self.pairs[:, 0], self.pairs[:, 1]
        c = graph.counting_numbers
        self.scale = graph.eps * c[V:]                       # (P,) eps c_p
        self.unary_scale = graph.eps * c[:V]                 # (V,) eps c_i
        # unaries by the sign of eps c_i: > 0, beliefs their own (a slice when all are: no
        # copies); = 0, dual term a max; = 0 or < 0, beliefs marginalised from a pair
        kind = np.sign(self.unary_scale)
        self.direct = slice(None) if np.all(kind > 0) else np.flatnonzero(kind > 0)
        self.zero, self.negative = np.flatnonzero(kind == 0), np.flatnonzero(kind < 0)
        self.unit = bool(np.all(self.scale == 1.0))
        self.first, self.second = u * V + v, v * V + u     # where g_{u->p}, g_{v->p} sit in H
        self.pair_unaries = self.pairs.ravel()   # u, v of pair 0, then of pair 1, ...
        # dense position (i, j) -> pair slot (P: no pair), and -> row of start's
        # [w (P) | 0 | -K from u's side (P) | 0 | -K from v's side (P) | 0]
        self.symmetric = np.full(V * V, P, np.int64)
        self.symmetric[self.first] = self.symmetric[self.second] = np.arange(P)
        self.empty = np.flatnonzero(self.symmetric == P)    # positions of no pair (the diagonal)
        self.inverse = 1.0 / self.scale
        # per pair row, then 1 for the zero row P (where a dense position has no pair)
        self.pair_inverse = np.append(self.inverse, 1.0)
        self.pair_scale = np.append(self.scale, 1.0)
        self.minus_k = np.full(V * V, P, np.int64)
        self.minus_k[self.first] = P + 1 + np.arange(P)
        self.minus_k[self.second] = 2 * (P + 1) + np.arange(P)
        inverse = np.ones((V, V))
        inverse[u, v] = inverse[v, u] = 1.0 / self.scale
        self.inverse_columns = inverse[:, :, None]           # 1 / s_ij (1 off the edges)
        chat = c[:V].copy()
        np.add.at(chat, u, c[V:])
        np.add.at(chat, v, c[V:])
        ratio = np.zeros((V, V))
        ratio[u, v], ratio[v, u] = c[V:] / chat[u], c[V:] / chat[v]
        self.ratio = ratio
        self.ratio_columns = ratio[:, :, None]
        # each edge (child unary r, parent pair p) in the template's message order, as a dense
        # position: messages are [edge 0: y=0, y=1 | edge 1: ...]
        edges = []
        for r, p in graph.edges:
            a, b = graph.regions[p]
            edges.append(a * V + b if r == a else b * V + a)
        self.edges = np.array(edges, np.int64)
        # unaries whose belief is marginalised from a pair, by the pair's variable they are:
        # (unaries, pair slots) for the first, then for the second
        sourced = [[], []]
        for r in range(V):
            p = graph.belief_source(r)
            if p is not None:
                sourced[graph.regions[p][0] != r].append((r, p - V))
        self.sourced = [tuple(np.array(column, np.int64) for column in zip(*side)) if side
                        else None for side in sourced]
        # the same per pair: the unary each pair's beliefs sum to over y_v (source_u) and over
        # y_u (source_v), -1 for none (what the compiled read-out takes)
        self.source_u, self.source_v = np.full(P, -1, np.int64), np.full(P, -1, np.int64)
        for into, side in zip((self.source_u, self.source_v), self.sourced):
            if side is not None:
                into[side[1]] = side[0]
        self.num_potentials = 2 * V + 4 * P
        self.num_messages = 2 * len(edges)
        # the kernels' index arrays (each call would otherwise scan them for its bounds check)
        for name in ("first", "second", "symmetric", "empty", "edges", "source_u", "source_v"):
            setattr(self, name, cpu_kernels.Indices(getattr(self, name)))
        self.colour_order = [cpu_kernels.Indices(list(colour)) for colour in graph.colours]
        self.sweep_order = cpu_kernels.Indices([i for colour in graph.colours for i in colour])


def dense_plan(graph: RegionGraph | None) -> DensePlan | None:
    """The plan if `graph` (a batch's template) is a dense binary pairwise graph: binary
    variables, unaries first in variable order, then pairs only, every pair with eps c_p > 0, and
    at least a quarter of all possible pairs (else the (V, V) arrays are mostly empty)."""
    if graph is None:
        return None
    return _plan(graph)


@functools.lru_cache(maxsize=64)
def _plan(graph: RegionGraph) -> DensePlan | None:
    V = len(graph.cardinalities)
    regions = graph.regions
    if V < 3 or any(c != 2 for c in graph.cardinalities) \
            or any(regions[i] != (i,) for i in range(V)) \
            or any(len(r) != 2 for r in regions[V:]) \
            or len(regions) - V < V * (V - 1) / 4 \
            or np.any(graph.counting_numbers[V:] <= 0):
        return None
    return DensePlan(graph)


def _pair_potentials(rows, plan: DensePlan, width: int, workspace) -> np.ndarray:
    """The pairs' potentials f (4, P, width) (f_00, f_01, f_10, f_11), samples last, from the
    samples' rows of potentials; the padding columns 0."""
    S, V, P = len(rows), plan.V, plan.P
    f = workspace.get("f", (4, P, width))   # samples last, each entry's plane contiguous
    given = rows[:, 2 * V:].reshape(S, P, 4).transpose(2, 1, 0)
    for p in range(0, P, _BLOCK):   # (a block at a time: its lines of theta stay in cache)
        f[:, p:p + _BLOCK, :S] = given[:, p:p + _BLOCK]
    if width > S:
        f[:, :, S:] = 0.0
    return f


class DenseState:
    """The shifted gaps and per-run coefficients of one range of samples, samples last: H (V, V,
    S'), H[i, j, s] = h_{i->{i,j}} of sample s; rows (2, P + 1, S'): w and E = expm1(|w|) per
    pair, then a zero row (where pair_of points for no pair); minus_k = -K (V V, S') (S' =
    max(S, 2): with one sample numpy would sum H's columns pairwise instead of in order, other
    bits than in a larger range; the extra sample has all-zero coefficients)."""

    def __init__(self, theta, lam, plan, samples, f, rows, pair_constant, H, minus_k, inner,
                 extreme, logf, workspace, run=None):
        self.theta, self._messages, self.plan, self.samples = theta, lam, plan, samples
        self.run = run   # the kernels' arguments (cpu_kernels.DenseRun), None on numpy's path
        self.workspace = workspace   # where the read-outs' arrays come from too
        self._f = f              # (4, P, S') pair potentials f_00, f_01, f_10, f_11, or None
        self.rows = rows
        self.w = rows[0, :plan.P]   # (P, S') the interactions w over s
        self.pair_constant = pair_constant   # (S',) sum_p f_01 + f_10 - f_11
        self.H, self.minus_k, self.inner = H, minus_k, inner
        self.extreme = extreme   # samples with some |w| > _EXPM1_LIMIT
        self.logf = logf         # their f / s from each side, (4, V, V, n), or None
        self.sharing = None
        self._gaps = None        # g = H + K (V * V, S'), once formed after the last update
        self._stale = True       # the messages are older than the last update

    @functools.cached_property
    def spread(self) -> np.ndarray:
        """(W, E, C) (3, V, V, S'): max(w, 0), expm1(|w|) and sign(w) eps c_p at both of each
        pair's positions, 0 where there is no pair (numpy's sweep reads a variable's row of
        each)."""
        plan = self.plan
        P, width = plan.P, self.H.shape[2]
        w, E = self.rows
        either = self.workspace.get("either", (3, P + 1, width))
        np.maximum(w, 0.0, out=either[0])
        either[1] = E
        np.copysign(1.0, w, out=either[2])
        if not plan.unit:
            either[2, :P] *= plan.scale[:, None]
        either[2, P] = 0.0
        return np.take(either, plan.symmetric, axis=1, mode="clip",
                       out=self.workspace.get("WEC", (3, plan.V * plan.V, width))).reshape(
            3, plan.V, plan.V, width)

    @property
    def f(self) -> np.ndarray:
        """The pairs' potentials (4, P, S'), formed on first use where start did not."""
        if self._f is None:
            self._f = _pair_potentials(self.theta.reshape(self.samples, -1), self.plan,
                                       self.H.shape[2], self.workspace)
        return self._f

    def gaps(self) -> np.ndarray:
        """The gaps g = H + K, (V * V, S')."""
        if self._gaps is None:
            self._gaps = np.subtract(self.H.reshape(self.minus_k.shape), self.minus_k,
                                     out=self.workspace.get("g", self.minus_k.shape))
        return self._gaps

    @property
    def messages(self) -> np.ndarray:
        if self._stale and self.run is not None:   # (cpu_kernels.c)
            cpu_kernels.dense_messages(cpu_kernels.library(), self.run, self.samples,
                                       self._messages)
            self._stale = False
        if self._stale:   # a max-0 binary message with gap g is (min(0, -g), min(0, g))
            S, edges = self.samples, self.plan.edges
            width = self.minus_k.shape[1]
            g = np.take(self.gaps(), edges, axis=0, mode="clip",
                        out=self.workspace.get("edge_gaps", (len(edges), width)))
            g = g[:, :S].T
            lam = self._messages.reshape(S, -1, 2)
            np.minimum(g, 0.0, out=lam[:, :, 1])
            np.subtract(lam[:, :, 1], g, out=lam[:, :, 0])
            self._stale = False
        return self._messages


class DenseBP:
    """The engine of one range of samples of a batch with a DensePlan (see the module doc)."""

    def __init__(self, plan: DensePlan, samples: int, colours: int):
        self.plan, self.samples = plan, samples
        self.batch = _Colours(colours)
        self.workspace = Workspace()   # ConvexBP.run's

    # --- state ----------------------------------------------------------------------------
    def start(self, theta: np.ndarray, lam: np.ndarray, given: np.ndarray | None, sweeps=None,
              sharing=None, workspace=FRESH) -> DenseState:
        """The state of a run (see FlatBP.start); pairs' and unaries' f read from `theta`, the
        `given` messages (or zeros) into the gaps.  `lam` is written only when the messages
        are read (DenseState.messages): nothing reads it before."""
        plan, S = self.plan, self.samples
        V, P = plan.V, plan.P
        rows = theta.reshape(S, plan.num_potentials)
        messages = given.reshape(S, -1, 2) if given is not None and given.size else None
        width = max(S, 2)
        pair_rows = workspace.get("rows", (2, P + 1, width))   # w, expm1(|w|)
        minus_k = workspace.get("minus_k", (V * V, width))
        gaps = workspace.get("H", (V * V, width))
        inner = workspace.get("inner", (V, width))
        kernels = cpu_kernels.library()
        run = None
        if kernels is not None:   # one pass over the potentials (cpu_kernels.c)
            f = None   # (formed if a read-out needs it: DenseState.f)
            pair_constant = workspace.get("pair_constant", (width,))
            scratch = workspace.get("scratch", (cpu_kernels.DenseRun.scratch_rows(plan, width),
                                                width))
            run = cpu_kernels.DenseRun(plan, pair_rows, pair_constant, minus_k, gaps, inner,
                                       scratch)
            largest = cpu_kernels.dense_start(kernels, run, rows, S, messages)
        else:
            f, pair_constant, largest = self._start_arrays(rows, pair_rows, minus_k, inner,
                                                           workspace)
            np.copyto(gaps, minus_k)   # zero messages: h = -K
            if messages is not None:
                gaps[plan.edges, :S] += (messages[:, :, 1] - messages[:, :, 0]).T
        extreme = np.zeros(0, np.int64)
        if largest > _EXPM1_LIMIT:
            extreme = np.flatnonzero((np.abs(pair_rows[0, :P, :S]) > _EXPM1_LIMIT).any(axis=0))
        logf = None
        if len(extreme):   # f / s from each side for the log-space update
            logf = np.zeros((4, V * V, len(extreme)))
            u, v = plan.pairs[:, 0], plan.pairs[:, 1]
            fe = rows[extreme, 2 * V:].reshape(-1, P, 4).transpose(2, 1, 0) \
                * (1.0 / plan.scale)[:, None]
            for k, (x, y) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                logf[k][u * V + v] = fe[2 * x + y]        # u's side: f(y_u = x, y_v = y)
                logf[k][v * V + u] = fe[2 * y + x]        # v's side: f(y_u = y, y_v = x)
            logf = logf.reshape(4, V, V, len(extreme))
        return DenseState(theta, lam, plan, S, f, pair_rows, pair_constant,
                          gaps.reshape(V, V, width), minus_k, inner, extreme, logf, workspace,
                          run)

    def _start_arrays(self, rows, pair_rows, minus_k, inner, workspace):
        """numpy's path of start (where the CPU kernels are not built): pair_rows, minus_k and
        inner filled; returns (f, pair_constant, the largest |w| of the samples)."""
        plan, S = self.plan, self.samples
        V, P = plan.V, plan.P
        width = max(S, 2)
        f = _pair_potentials(rows, plan, width, workspace)
        f00, f01, f10, f11 = f
        pairs = workspace.get("pairs", (3, P + 1, width))   # w, -K from u's side, from v's
        pairs[:, P] = 0.0
        w, minus_u, minus_v = pairs[:, :P]
        np.add(f10, f01, out=w)
        w -= f00
        w -= f11
        if not plan.unit:
            w *= (1.0 / plan.scale)[:, None]
        np.subtract(f11, f01, out=minus_u)
        np.subtract(f11, f10, out=minus_v)
        pair_rows[:, P] = 0.0
        E = pair_rows[1, :P]
        pair_constant = np.subtract(f10, minus_u, out=E).sum(axis=0)   # sum_p A_p (see _pairs)
        pair_rows[0] = pairs[0]
        np.abs(w, out=E)
        largest = float(np.fmax.reduce(E[:, :S], axis=None, initial=0.0))   # (NaN ignored)
        with np.errstate(over="ignore"):
            np.expm1(E, out=E)
        np.take(pairs.reshape(3 * (P + 1), width), plan.minus_k, axis=0, mode="clip",
                out=minus_k)
        inner.fill(0.0)   # (each unary's sum of -K in the pairs' order, as the kernel sums)
        np.add.at(inner, plan.pair_unaries, pairs[1:, :P].transpose(1, 0, 2).reshape(2 * P, width))
        unary_gaps = np.subtract(rows[:, 1:2 * V:2].T, rows[:, 0:2 * V:2].T)
        np.add(unary_gaps, inner[:, :S], out=inner[:, :S])
        return f, pair_constant, largest

    # --- sweeps ---------------------------------------------------------------------------
    def _update(self, state: DenseState, i: int, change: bool, work) -> float:
        plan, H = self.plan, state.H
        t, old = work
        W, E, C = state.spread
        x = H[:, i]                                 # h_{j->p} of every neighbour j, (V, S')
        if plan.unit:
            np.add(x, W[i], out=t)
        else:
            np.multiply(x, plan.inverse_columns[i], out=t)
            t += W[i]
        np.exp(t, out=t)
        t += 1.0
        np.divide(E[i], t, out=t)
        np.log1p(t, out=t)
        t *= C[i]                                   # C log1p(...): mu's gap less (f_11 - f_01)
        total = t.sum(axis=0)
        total += state.inner[i]
        row = H[i]
        if change:
            old[:] = row
        np.multiply(plan.ratio_columns[i], total, out=row)
        row -= t
        if len(state.extreme):
            self._log_space(state, i)
        if not change:
            return 0.0
        # the largest change of a message entry (min(0, -g), min(0, g)), g = h + K
        minus_k = state.minus_k.reshape(H.shape)[i]
        largest = np.minimum(np.abs(row - old), np.maximum(np.abs(row - minus_k),
                                                           np.abs(old - minus_k)))
        return float(largest.max())

    def _log_space(self, state: DenseState, i: int):
        """The update of variable i for the samples with extreme interactions, from f itself:
        s (logaddexp(l_10, l_11 + x) - logaddexp(l_00, l_01 + x)), l = f / s from i's side."""
        plan, rows = self.plan, state.extreme
        minus_k = state.minus_k.reshape(state.H.shape)
        l00, l01, l10, l11 = (state.logf[k][i] for k in range(4))
        x = (state.H[:, i][:, rows] - minus_k[:, i][:, rows]) * plan.inverse_columns[i]
        scale = 1.0 / plan.inverse_columns[i]
        mu = scale * (np.logaddexp(l10, l11 + x) - np.logaddexp(l00, l01 + x))
        edge = plan.ratio[i] != 0
        mu[~edge] = 0.0
        unary = state.theta.reshape(self.samples, -1)[rows, 2 * i:2 * i + 2]
        total = unary[:, 1] - unary[:, 0] + mu.sum(axis=0)
        state.H[i][:, rows] = np.where(edge[:, None], plan.ratio_columns[i] * total - mu
                                       + minus_k[i][:, rows], 0.0)

    def update_colour(self, state: DenseState, k: int, change: bool = True) -> float:
        """Update the variables of colour k (one after the other: they share no pair)."""
        return self._updates(state, self.plan.colour_order[k], change)

    def sweep(self, state: DenseState, change: bool = True) -> float:
        """Every variable once, colour by colour; the largest message entry change (0 if not
        `change`)."""
        return self._updates(state, self.plan.sweep_order, change)

    def _updates(self, state: DenseState, variables, change: bool) -> float:
        if state.run is not None and not len(state.extreme):   # (cpu_kernels.c)
            largest = cpu_kernels.dense_sweep(cpu_kernels.library(), state.run, variables, change)
            state._gaps, state._stale = None, True
            return largest
        shape = state.H.shape[1:]
        work = (np.empty(shape), np.empty(shape))
        largest = 0.0
        # (overflow to inf is meant: e^(x - m) = inf gives log1p(0); extreme samples' rows are
        # replaced by _log_space)
        with np.errstate(over="ignore", invalid="ignore"):
            for i in variables:
                largest = max(largest, self._update(state, i, change, work))
        state._gaps, state._stale = None, True
        return largest

    # --- read-outs ------------------------------------------------------------------------
    def _pairs(self, state: DenseState, out=None, unaries=None):
        """Each pair's eps c_p log sum exp(fhat_p / (eps c_p)) less min(0, -g_u) + min(0, -g_v),
        summed over the pairs, (S',), and into `out` (S, P, 4) if given the pairs' beliefs; with
        `unaries` (S, 2 V, the same rows' unary beliefs) also the beliefs of the unaries that
        sum a pair's (plan.sourced: those with eps c_i <= 0).

        fhat_p is f_p plus the max-0 messages (min(0, -g), min(0, g)) of its two variables;
        shifted by those constants it is f_p(y_u, y_v) + y_u g_u + y_v g_v, which is A_p + (-w,
        h_v, h_u, h_u + h_v) in the entry order (00, 01, 10, 11), A_p = f_01 + f_10 - f_11 (w and
        h over s).  So the four exponentials are e^-w, b, a and ab with a = e^h_u, b = e^h_v: two
        per pair from the gaps, one from E = expm1(|w|) (no exp), and a sum of positive terms
        (nothing cancels); the beliefs are the terms times 1 / their sum.  None
        if a sample is extreme or a term overflows: _peaked_pairs then (and rewrites `out`)."""
        plan, S = self.plan, self.samples
        if len(state.extreme):
            return None
        width = state.H.shape[2]
        if state.run is not None:   # one pass over the pairs (cpu_kernels.c)
            log_sum = state.pair_constant.copy()
            finite = cpu_kernels.dense_pairs(cpu_kernels.library(), state.run, S, out, log_sum,
                                             _BLOCK, unaries)
            return log_sum if finite else None
        H = state.H.reshape(plan.V * plan.V, width)
        into = None if out is None else out.transpose(2, 1, 0)
        block = state.workspace.get("z", (4, _BLOCK, width))
        totals = state.workspace.get("total", (_BLOCK, width))
        log_sum = state.pair_constant.copy()
        # a block of pairs at a time: its arrays stay in cache from the first pass to the last
        for p0 in range(0, plan.P, _BLOCK):
            p1 = min(p0 + _BLOCK, plan.P)
            z, total = block[:, :p1 - p0], totals[:p1 - p0]
            np.add(state.rows[1, p0:p1], 1.0, out=z[0])   # e^|w| = 1 + expm1(|w|), then e^-w
            np.divide(1.0, z[0], out=z[0], where=state.w[p0:p1] >= 0.0)
            np.take(H, plan.second[p0:p1], axis=0, out=z[1], mode="clip")
            np.take(H, plan.first[p0:p1], axis=0, out=z[2], mode="clip")
            if not plan.unit:
                z[1:3] *= (1.0 / plan.scale[p0:p1])[:, None]
            with np.errstate(over="ignore", invalid="ignore"):
                np.exp(z[1:3], out=z[1:3])
                np.multiply(z[1], z[2], out=z[3])
                np.add(z[0], z[1], out=total)
                total += z[2]
                total += z[3]
            if not np.isfinite(total.max()):
                return None
            if into is not None:
                np.multiply(z[:, :, :S], np.reciprocal(total[:, :S]), out=into[:, p0:p1])
            np.log(total, out=total)
            if not plan.unit:
                total *= plan.scale[p0:p1, None]
            log_sum += total.sum(axis=0)
        if unaries is not None:
            self._sourced_beliefs(out, unaries)
        return log_sum

    def _sourced_beliefs(self, out, unaries):
        """The beliefs of the unaries with eps c_i <= 0 into `unaries` (S, 2 V) from their
        pairs' beliefs `out` (S, P, 4): b_u sums over y_v, b_v over y_u."""
        S, plan = self.samples, self.plan
        mine = unaries.reshape(S, plan.V, 2)
        table = out.reshape(S, plan.P, 2, 2)
        for axis, sourced in zip((3, 2), plan.sourced):
            if sourced is not None:
                mine[:, sourced[0]] = table[:, sourced[1]].sum(axis=axis)

    def _peaked_pairs(self, state: DenseState, out=None):
        """_pairs by log sum exp with each pair's largest entry taken out (for extreme samples
        and overflowing gaps)."""
        plan, S = self.plan, self.samples
        g = state.gaps()
        shape = (plan.P, g.shape[1])
        g_u = np.take(g, plan.first, axis=0, out=state.workspace.get("g_u", shape), mode="clip")
        g_v = np.take(g, plan.second, axis=0, out=state.workspace.get("g_v", shape), mode="clip")
        f = state.f
        z = state.workspace.get("z", (4, *shape))
        z[0] = f[0]
        np.add(f[1], g_v, out=z[1])
        np.add(f[2], g_u, out=z[2])
        np.add(f[3], g_u, out=z[3])
        z[3] += g_v
        if not plan.unit:
            z *= (1.0 / plan.scale)[None, :, None]
        peak = np.maximum(np.maximum(z[0], z[1]), np.maximum(z[2], z[3]))
        z -= peak
        np.exp(z, out=z)
        total = z[0] + z[1]
        total += z[2]
        total += z[3]
        if out is not None:
            np.divide(z[:, :, :S], total[:, :S], out=out.transpose(2, 1, 0))
        log_partition = np.log(total)
        log_partition += peak
        log_partition *= plan.scale[:, None]
        return log_partition.sum(axis=0)

    def _unaries(self, state: DenseState, dual, rows=None):
        """numpy's path of the unaries' read-out: `dual` (S',) less the raised gaps (see _pairs)
        plus each unary's eps c_i log sum exp(fhat_i / (eps c_i)) (max fhat_i where c_i = 0);
        the beliefs of the unaries with c_i > 0 into `rows` (S, num_potentials) if given."""
        plan, S = self.plan, self.samples
        V, width = plan.V, state.H.shape[2]
        g = state.gaps().reshape(V, V, width)
        raised = np.maximum(g, 0.0, out=state.workspace.get("high", g.shape)).sum(axis=1)
        unary = state.theta.reshape(S, plan.num_potentials)[:, :2 * V].reshape(S, V, 2)
        fhat = np.zeros((2, V, width))   # (y, i, s)
        fhat[:, :, :S] = unary.transpose(2, 1, 0)
        fhat[0] += raised   # less sum_j lambda_{i->{i,j}}(0) = sum_j min(0, -g) = -raised
        fhat[1] += raised   # less sum_j lambda_{i->{i,j}}(1) = sum_j min(g, 0) = sum_j g - raised
        fhat[1] -= g.sum(axis=1)
        dual -= raised.sum(axis=0)                  # the pairs' shifts (see _pairs)
        scale = plan.unary_scale[:, None]
        terms = np.empty(fhat.shape[1:])
        for where in (plan.direct, plan.negative):
            if isinstance(where, slice) or len(where):
                z = fhat[:, where] / scale[where]
                peak = np.maximum(z[0], z[1])
                z -= peak
                np.exp(z, out=z)
                total = z[0] + z[1]
                terms[where] = scale[where] * (peak + np.log(total))
                if where is plan.direct and rows is not None:
                    mine = rows[:, :2 * V].reshape(S, V, 2)
                    mine[:, plan.direct] = (z / total)[:, :, :S].transpose(2, 1, 0)
        if len(plan.zero):
            terms[plan.zero] = np.maximum(fhat[0, plan.zero], fhat[1, plan.zero])
        dual += terms.sum(axis=0)

    def readout(self, state: DenseState, beliefs_out=None, exports=False):
        """(dual per sample, None, None); beliefs into `beliefs_out` if given."""
        plan, S = self.plan, self.samples
        V, P = plan.V, plan.P
        out = unaries = None
        if beliefs_out is not None:
            rows = beliefs_out.reshape(S, plan.num_potentials)
            out = rows[:, 2 * V:].reshape(S, P, 4)
            if any(side is not None for side in plan.sourced):
                unaries = rows[:, :2 * V]
        dual = self._pairs(state, out, unaries)
        if dual is None:
            dual = self._peaked_pairs(state, out)
            if unaries is not None:
                self._sourced_beliefs(out, unaries)
        if state.run is not None:   # (cpu_kernels.c)
            cpu_kernels.dense_unaries(cpu_kernels.library(), state.run,
                                      state.theta.reshape(S, plan.num_potentials), S,
                                      None if out is None else rows, dual)
        else:
            self._unaries(state, dual, None if out is None else rows)
        return dual[:S], None, None

    def dual(self, state: DenseState) -> np.ndarray:
        return self.readout(state)[0]

    def beliefs(self, state: DenseState, out=None) -> np.ndarray:
        out = np.empty(self.samples * self.plan.num_potentials) if out is None else out
        self.readout(state, out)
        return out


class _Colours:
    """What ConvexBP reads of a range's batch: how many colours it has."""

    def __init__(self, count: int):
        self.colours = [None] * count
