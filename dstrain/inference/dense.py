"""Convex BP for batches of one dense binary pairwise graph (the tagging task's fully connected
graph over 38 labels), on (S, V, V) arrays instead of index arrays.

Variable i's update needs, for each neighbour j, only the gap g_{j->p} = lambda(1) - lambda(0) of
the message j sends into their pair p; all gaps live in G[s, i, j] = g_{i->{i,j}} (0 where there is
no pair), so i reads column G[:, :, i] and writes row G[:, i, :], both views.  From i's side
(f_xy = f_p(y_i = x, y_j = y), eps c_p = s, x_j = g_{j->p} / s, docs/design.md §2):

    mu_{p->i}(1) - mu_{p->i}(0) = s log((t_10 + t_11 e^x_j) / (t_00 + t_01 e^x_j)),  t = e^(f / s)
                                = (f_11 - f_01) + s sign(w) log1p(expm1(|w|) / (1 + e^(x_j - m)))

with w = (f_10 + f_01 - f_00 - f_11) / s (the interaction, the same from either side) and
m = (f_00 - f_01) / s + min(w, 0): start computes K = f_01 - f_11, E = expm1(|w|), C = s sign(w) and
M = m for every (i, j) once per run, so a variable's update is a handful of operations on (S, V)
arrays with one exp and one log1p per edge, and nothing cancels: the log1p's argument is >= 0.
Then, with R_ij = c_p / (c_i + sum of i's pairs' c):

    total_i = (f_i(1) - f_i(0) - sum_j K_ij) + sum_j C_ij log1p(...)_ij
    g_{i->p} = R_ij total_i + K_ij - C_ij log1p(...)_ij

Pairs and diagonal entries that are no edge have K = E = C = R = 0 and stay 0.  Samples with some
|w| > 700 (expm1 would overflow) take the same update in log space (logaddexp), row by row.  The
numbers depend on a sample's own data only, so ranges of samples run in threads give the same bits
(bp.py).  Read-outs form each pair's four fhat entries from the gaps (max-0 messages
(min(0, -g), min(0, g))).
"""
from __future__ import annotations

import functools

import numpy as np

from ..graph.region_graph import RegionGraph
from .flat import FRESH, Workspace

# |w| above this takes the log-space update (expm1 overflows above 709.78)
_EXPM1_LIMIT = 700.0


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
        self.unit = bool(np.all(self.scale == 1.0))
        # dense position (i, j) -> slot in [values from u's side (P) | from v's side (P) | 0]
        self.gather = np.full(V * V, 2 * P, np.int64)
        self.gather[u * V + v] = np.arange(P)
        self.gather[v * V + u] = P + np.arange(P)
        self.symmetric = np.where(self.gather < 2 * P, self.gather % max(P, 1), P)
        self.first, self.second = u * V + v, v * V + u     # where g_{u->p}, g_{v->p} sit in G
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
        self.order = [list(colour) for colour in graph.colours]
        # unaries whose belief is marginalised from a pair: (variable, pair slot, it is the
        # pair's first variable)
        self.sourced = [(r, graph.belief_source(r) - V, graph.regions[graph.belief_source(r)][0] == r)
                        for r in range(V) if graph.belief_source(r) is not None]
        self.num_potentials = 2 * V + 4 * P
        self.num_messages = 2 * len(edges)


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


class DenseState:
    """The gaps and per-run coefficients of one range of samples, samples last: G (V, V, S'),
    G[i, j, s] = g_{i->{i,j}} of sample s, and M, K, E, C likewise (S' = max(S, 2): with one
    sample numpy would sum G's columns pairwise instead of in order, other bits than in a
    larger range; the extra sample has all-zero coefficients)."""

    def __init__(self, theta, lam, plan, samples, f, G, M, K, E, C, inner, extreme, logf,
                 workspace):
        self.theta, self._messages, self.plan, self.samples = theta, lam, plan, samples
        self.workspace = workspace   # where the read-outs' arrays come from too
        self.f = f               # (4, P, S') pair potentials f_00, f_01, f_10, f_11
        self.G, self.M, self.K, self.E, self.C, self.inner = G, M, K, E, C, inner
        self.extreme = extreme   # samples with some |w| > _EXPM1_LIMIT
        self.logf = logf         # their f / s from each side, (4, V, V, n), or None
        self.sharing = None
        self._stale = True

    @property
    def messages(self) -> np.ndarray:
        if self._stale:   # a max-0 binary message with gap g is (min(0, -g), min(0, g))
            S = self.samples
            g = self.G.reshape(-1, self.G.shape[2])[self.plan.edges, :S].T
            lam = self._messages.reshape(S, -1, 2)
            np.minimum(-g, 0.0, out=lam[:, :, 0])
            np.minimum(g, 0.0, out=lam[:, :, 1])
            self._stale = False
        return self._messages


class DenseBP:
    """The engine of one range of samples of a batch with a DensePlan (see the module doc)."""

    def __init__(self, plan: DensePlan, samples: int, colours: int):
        self.plan, self.samples = plan, samples
        self.batch = _Colours(colours)
        self.workspace = Workspace()   # ConvexBP.run's

    # --- state ----------------------------------------------------------------------------
    def start(self, theta: np.ndarray, lam: np.ndarray, warm: bool, sweeps=None,
              sharing=None, workspace=FRESH) -> DenseState:
        """The state of a run (see FlatBP.start); pairs' and unaries' f read from `theta`."""
        plan, S = self.plan, self.samples
        V, P = plan.V, plan.P
        width = max(S, 2)
        rows = theta.reshape(S, plan.num_potentials)
        f = workspace.get("f", (4, P, width))   # samples last, each entry's plane contiguous
        f[:, :, :S] = rows[:, 2 * V:].reshape(S, P, 4).transpose(2, 1, 0)
        if width > S:
            f[:, :, S:] = 0.0
        f00, f01, f10, f11 = f
        inverse = (1.0 / plan.scale)[:, None]
        w = f10 + f01
        w -= f00
        w -= f11
        if not plan.unit:
            w *= inverse
        low = np.minimum(w, 0.0)
        # M and K from each side ([u's | v's | 0]), E and C from either ([pairs | 0]), then
        # gathers into the dense layout
        sides = workspace.get("sides", (2, 2 * P + 1, width))
        either = workspace.get("either", (2, P + 1, width))
        sides[:, 2 * P] = either[:, P] = 0.0
        M, K = sides
        E, C = either
        for half, (a, b) in enumerate(((f01, f11), (f10, f11))):   # u's side, then v's
            at = slice(half * P, (half + 1) * P)
            np.subtract(f00, a, out=M[at])
            if not plan.unit:
                M[at] *= inverse
            M[at] += low
            np.subtract(a, b, out=K[at])
        np.abs(w, out=E[:P])
        extreme = np.flatnonzero((E[:P, :S] > _EXPM1_LIMIT).any(axis=0))
        with np.errstate(over="ignore"):
            np.expm1(E[:P], out=E[:P])
        np.copysign(plan.scale[:, None], w, out=C[:P])
        M, K = np.take(sides, plan.gather, axis=1, mode="clip",
                       out=workspace.get("MK", (2, V * V, width))).reshape(2, V, V, width)
        E, C = np.take(either, plan.symmetric, axis=1, mode="clip",
                       out=workspace.get("EC", (2, V * V, width))).reshape(2, V, V, width)
        unary = rows[:, :2 * V].reshape(S, V, 2)
        inner = np.zeros((V, width))
        inner[:, :S] = (unary[:, :, 1] - unary[:, :, 0]).T
        inner -= K.sum(axis=1)
        gaps = workspace.get("G", (V * V, width))
        gaps.fill(0.0)
        if warm and lam.size:   # (else the messages are 0: so are the gaps)
            messages = lam.reshape(S, -1, 2)
            gaps[plan.edges, :S] = (messages[:, :, 1] - messages[:, :, 0]).T
        logf = None
        if len(extreme):   # f / s from each side for the log-space update
            logf = np.zeros((4, V * V, len(extreme)))
            u, v = plan.pairs[:, 0], plan.pairs[:, 1]
            fe = f[:, :, extreme] * inverse
            for k, (x, y) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                logf[k][u * V + v] = fe[2 * x + y]        # u's side: f(y_u = x, y_v = y)
                logf[k][v * V + u] = fe[2 * y + x]        # v's side: f(y_u = y, y_v = x)
            logf = logf.reshape(4, V, V, len(extreme))
        return DenseState(theta, lam, plan, S, f, gaps.reshape(V, V, width), M, K, E, C, inner,
                          extreme, logf, workspace)

    # --- sweeps ---------------------------------------------------------------------------
    def _update(self, state: DenseState, i: int, change: bool, work) -> float:
        plan, G = self.plan, state.G
        t, old = work
        x = G[:, i]                                 # g_{j->p} of every neighbour j, (V, S')
        if plan.unit:
            np.subtract(x, state.M[i], out=t)
        else:
            np.multiply(x, plan.inverse_columns[i], out=t)
            t -= state.M[i]
        np.exp(t, out=t)
        t += 1.0
        np.divide(state.E[i], t, out=t)
        np.log1p(t, out=t)
        t *= state.C[i]                             # C log1p(...): mu's gap less (f_11 - f_01)
        total = t.sum(axis=0)
        total += state.inner[i]
        row = G[i]
        if change:
            old[:] = row
        np.multiply(plan.ratio_columns[i], total, out=row)
        row += state.K[i]
        row -= t
        if len(state.extreme):
            self._log_space(state, i)
        if not change:
            return 0.0
        largest = np.minimum(np.abs(row - old), np.maximum(np.abs(row), np.abs(old)))
        return float(largest.max())

    def _log_space(self, state: DenseState, i: int):
        """The update of variable i for the samples with extreme interactions, from f itself:
        s (logaddexp(l_10, l_11 + x) - logaddexp(l_00, l_01 + x)), l = f / s from i's side."""
        plan, rows = self.plan, state.extreme
        l00, l01, l10, l11 = (state.logf[k][i] for k in range(4))
        x = state.G[:, i][:, rows] * plan.inverse_columns[i]
        scale = 1.0 / plan.inverse_columns[i]
        mu = scale * (np.logaddexp(l10, l11 + x) - np.logaddexp(l00, l01 + x))
        edge = plan.ratio[i] != 0
        mu[~edge] = 0.0
        unary = state.theta.reshape(self.samples, -1)[rows, 2 * i:2 * i + 2]
        total = unary[:, 1] - unary[:, 0] + mu.sum(axis=0)
        state.G[i][:, rows] = np.where(edge[:, None], plan.ratio_columns[i] * total - mu, 0.0)

    def update_colour(self, state: DenseState, k: int, change: bool = True) -> float:
        """Update the variables of colour k (one after the other: they share no pair)."""
        return self._updates(state, self.plan.order[k], change)

    def sweep(self, state: DenseState, change: bool = True) -> float:
        """Every variable once, colour by colour; the largest message entry change (0 if not
        `change`)."""
        return self._updates(state, self._sweep_order, change)

    @functools.cached_property
    def _sweep_order(self) -> list[int]:
        return [i for colour in self.plan.order for i in colour]

    def _updates(self, state: DenseState, variables, change: bool) -> float:
        shape = state.G.shape[1:]
        work = (np.empty(shape), np.empty(shape))
        largest = 0.0
        # (overflow to inf is meant: e^(x - m) = inf gives log1p(0); extreme samples' rows are
        # replaced by _log_space)
        with np.errstate(over="ignore", invalid="ignore"):
            for i in variables:
                largest = max(largest, self._update(state, i, change, work))
        state._stale = True
        return largest

    # --- read-outs ------------------------------------------------------------------------
    def _pairs(self, state: DenseState, out=None):
        """Each pair's eps c_p log sum exp(fhat_p / (eps c_p)) less min(0, -g_u) + min(0, -g_v),
        (P, S'), and into `out` (S, P, 4) if given its beliefs.  fhat_p is f_p plus the max-0
        messages (min(0, -g), min(0, g)) of its two variables; shifted by those constants it is
        f_p(y_u, y_v) + y_u g_u + y_v g_v (the beliefs do not change)."""
        plan, S = self.plan, self.samples
        G = state.G.reshape(-1, state.G.shape[2])
        shape = (plan.P, G.shape[1])
        g_u = np.take(G, plan.first, axis=0, out=state.workspace.get("g_u", shape), mode="clip")
        g_v = np.take(G, plan.second, axis=0, out=state.workspace.get("g_v", shape), mode="clip")
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
        return log_partition

    def readout(self, state: DenseState, beliefs_out=None, exports=False):
        """(dual per sample, None, None); beliefs into `beliefs_out` if given."""
        plan, S = self.plan, self.samples
        V, P = plan.V, plan.P
        out = None
        if beliefs_out is not None:
            rows = beliefs_out.reshape(S, plan.num_potentials)
            out = rows[:, 2 * V:].reshape(S, P, 4)
        dual = self._pairs(state, out).sum(axis=0)
        unary = state.theta.reshape(S, plan.num_potentials)[:, :2 * V].reshape(S, V, 2)
        fhat = np.zeros((2, V, state.G.shape[2]))   # (y, i, s)
        fhat[:, :, :S] = unary.transpose(2, 1, 0)
        low = np.minimum(-state.G, 0.0).sum(axis=1)   # sum_j lambda_{i->{i,j}}(0)
        fhat[0] -= low
        fhat[1] -= np.minimum(state.G, 0.0).sum(axis=1)
        dual += low.sum(axis=0)                        # the pairs' shifts (see _pairs)
        scale = plan.unary_scale[:, None]
        terms = np.empty(fhat.shape[1:])
        direct, zero, negative = scale[:, 0] > 0, scale[:, 0] == 0, scale[:, 0] < 0
        beliefs = None
        for where in (direct, negative):
            if where.any():
                z = fhat[:, where] / scale[where]
                peak = np.maximum(z[0], z[1])
                z -= peak
                np.exp(z, out=z)
                total = z[0] + z[1]
                terms[where] = scale[where] * (peak + np.log(total))
                if where is direct:
                    beliefs = z / total
        terms[zero] = np.maximum(fhat[0, zero], fhat[1, zero])
        dual += terms.sum(axis=0)
        if out is not None:
            mine = rows[:, :2 * V].reshape(S, V, 2)
            if beliefs is not None:
                mine[:, direct] = beliefs[:, :, :S].transpose(2, 1, 0)
            pairs = out.reshape(S, P, 2, 2)
            for r, slot, first in plan.sourced:
                mine[:, r] = pairs[:, slot].sum(axis=2 if first else 1)
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
