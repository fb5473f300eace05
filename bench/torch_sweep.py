"""One convex-BP sweep in plain torch, for batches whose parents are all fast pairs: the baseline
that bench/gpu_check.py times the CUDA kernels against.

    python bench/torch_sweep.py         # check_against_cpu(): float64 messages == ConvexBP's

Fast pairs only (1st/2nd-order chains, fully connected binary, pairwise trees and grids): every
region is a unary, every parent a pair with two unary children (docs/design.md §2, dstrain/graph/batch.py
FastGroup).  Then for the edges r -> p of one colour

    mu_{p->r}(y_r)     = eps c_p logsumexp_{y_o} ((f_p(y_r, y_o) + lambda_{o->p}(y_o)) / (eps c_p))
    total_r(y_r)       = f_r(y_r) + sum_p mu_{p->r}(y_r)
    lambda_{r->p}(y_r) = c_p / chat_r * total_r(y_r) - mu_{p->r}(y_r),   minus its max over y_r

which is what the kernels' edge_mu / region_update compute.  Only stock torch operations are used
(index gathers, torch.logsumexp, index_add_, index_copy_), so it runs on any torch device.  The
pair tables are gathered and oriented (rows = r's states) once per run in `start`, as a torch user
would, since they are constant while the potentials are; a sweep reads them and the messages.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.graph import GraphBatch, RegionGraph, chain, fully_connected, grid  # noqa: E402


@dataclass
class _Group:
    """The edges of one FastGroup of a colour, as device tensors."""

    start: torch.Tensor       # (E,) potential index of the pair's first entry
    straight: torch.Tensor    # (n_r, n_o) offset of f_p(y_r, y_o) from `start` if r is y_a ...
    flipped: torch.Tensor     # ... and if r is y_b (the table's transpose)
    transposed: torch.Tensor  # (E, 1, 1) bool
    own: torch.Tensor         # (E * n_r,) message index of lambda_{r->p}, flat
    other: torch.Tensor       # (E, n_o) message index of lambda_{o->p}
    scale: torch.Tensor       # (E, 1) eps c_p
    q: torch.Tensor           # (E * n_r,) position of (r, y_r) among the colour's region entries
    ratio: torch.Tensor       # (E, n_r) c_p / chat_r
    n_r: int


class TorchSweep:
    """Plain-torch sweeps over one GraphBatch of fast pairs (build once, run many times)."""

    def __init__(self, batch: GraphBatch, device="cpu", dtype=torch.float32):
        self.batch, self.device, self.dtype = batch, torch.device(device), dtype
        if any(c.generic or not c.childless for c in batch.colours):
            raise ValueError("TorchSweep handles batches whose parents are all fast pairs "
                             "(chains, fully connected, pairwise trees and grids)")

        def on(a, kind=torch.int64):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=kind, device=self.device)

        self.colours = []
        for c in batch.colours:
            groups = []
            for g in c.fast:
                n_r, n_o = g.own.shape[1], g.other.shape[1]
                i, k = np.meshgrid(np.arange(n_r), np.arange(n_o), indexing="ij")
                # PairGroup tables are C order (y_a, y_b): r is y_a unless the edge is transposed
                groups.append(_Group(
                    start=on(self.batch.pair_groups[g.pair_group].entries[g.pairs, 0]),
                    straight=on(i * n_o + k), flipped=on(k * n_r + i),
                    transposed=on(g.transposed, torch.bool)[:, None, None],
                    own=on(g.own.ravel()), other=on(g.other),
                    scale=on(g.scale[:, None], dtype), q=on(c.edge_entry_q[g.entries]),
                    ratio=on(c.edge_entry_ratio[g.entries].reshape(-1, n_r), dtype), n_r=n_r))
            self.colours.append((on(c.region_entries), groups))

    def start(self, potentials: torch.Tensor):
        """Per colour: the unary potentials and each group's oriented pair tables (constant)."""
        f = torch.as_tensor(potentials, dtype=self.dtype, device=self.device)

        def table(g):   # its (E, n_r, n_o) index exists only while it is gathered (memory)
            return f[g.start[:, None, None] + torch.where(g.transposed, g.flipped, g.straight)]

        return [(f[entries], [table(g) for g in groups]) for entries, groups in self.colours]

    def sweep(self, tables, lam: torch.Tensor) -> torch.Tensor:
        """One sweep, colour by colour, updating the messages `lam` in place."""
        for (entries, groups), (unary, pair_tables) in zip(self.colours, tables):
            mus = []
            total = unary.clone()
            for g, table in zip(groups, pair_tables):
                z = (table + lam[g.other][:, None, :]) / g.scale[:, :, None]
                mu = g.scale * torch.logsumexp(z, dim=2)                   # (E, n_r)
                total.index_add_(0, g.q, mu.reshape(-1))
                mus.append(mu)
            for g, mu in zip(groups, mus):
                new = g.ratio * total[g.q].view(-1, g.n_r) - mu
                new = new - new.amax(dim=1, keepdim=True)                   # max 0 per message
                lam.index_copy_(0, g.own, new.reshape(-1))
        return lam

    def run(self, potentials, messages, sweeps: int) -> torch.Tensor:
        tables = self.start(potentials)
        lam = torch.as_tensor(messages, dtype=self.dtype, device=self.device).clone()
        for _ in range(sweeps):
            self.sweep(tables, lam)
        return lam


def _pairwise_tree(rng, n: int) -> RegionGraph:
    """Unaries of 2-4 states and random tree pairs in either orientation: non-square tables and
    transposed edges, which chains of one state count never have."""
    cards = [int(c) for c in rng.integers(2, 5, n)]
    pairs = [(int(rng.integers(0, v)), v) for v in range(1, n)]
    pairs = [p if rng.random() < 0.5 else p[::-1] for p in pairs]
    return RegionGraph(cards, [(v,) for v in range(n)] + pairs)


def check_against_cpu(seed: int = 0, sweeps: int = 3, log=print) -> float:
    """float64 messages after `sweeps` sweeps against ConvexBP's on fast-pair batches; returns the
    largest relative difference and raises AssertionError above 1e-10."""
    from dstrain.inference import ConvexBP

    rng = np.random.default_rng(seed)
    batches = {
        "chains order 1, C=26": [chain(int(n), 26) for n in rng.integers(1, 9, 6)],
        "chains order 2, C=26": [chain(int(n), 26, order=2) for n in rng.integers(1, 9, 6)],
        "chains order 1+2, C=3, bethe": [
            chain(int(n), 3, order=int(o), counting_numbers="bethe")
            for n, o in zip(rng.integers(1, 9, 6), rng.integers(1, 3, 6))],
        "fully connected binary": [fully_connected(int(n), 2) for n in rng.integers(2, 9, 5)],
        "pairwise trees and a grid": [
            *[_pairwise_tree(rng, int(n)) for n in rng.integers(2, 8, 4)], grid(2, 3, 3)],
    }
    worst = 0.0
    for name, graphs in batches.items():
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=2.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        expected = ConvexBP(batch).run(potentials, messages, max_sweeps=sweeps, tol=0.0).messages
        mine = TorchSweep(batch, "cpu", torch.float64).run(
            torch.from_numpy(potentials), torch.from_numpy(messages), sweeps).numpy()
        error = float(np.abs(mine - expected).max() / max(np.abs(expected).max(), 1.0))
        log(f"  torch sweep vs ConvexBP, {name}: max relative difference {error:.1e}")
        assert error <= 1e-10, f"torch sweep differs from ConvexBP on {name}: {error:.3e}"
        worst = max(worst, error)
    return worst


if __name__ == "__main__":
    print(f"torch sweep matches ConvexBP (float64): worst {check_against_cpu():.1e}")
