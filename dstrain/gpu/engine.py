"""Convex BP on a device: the CPU engine (`dstrain/inference/bp.py`) as CUDA kernel launches.

The kernels are those of ``cuda/convex_bp.cu``; this file turns a ``GraphBatch`` into the int32
tables they read (once per batch layout) and runs the sweep schedule.  It is written against a
*kernel set* -- ``kernels.xp`` (the array module), ``kernels.dtype``,
``kernels.launch(name, count, args)`` and ``kernels.stream()`` (the context to launch in) -- so the same code runs with CuPy on a GPU
(``dstrain.gpu.kernels.CudaKernels``) and with numpy on the CPU, where the very same ``.cu`` source
is compiled by g++ (``dstrain.gpu.emulator``): the tests check the kernels there against the CPU
engine, without a GPU.

Per sweep and colour: one ``edge_mu`` launch (a thread per message entry of the colour) and one
``region_update`` launch (a thread per region).  Nothing is read back to the host during a run
except, with ``tol > 0``, each sweep's largest message change (the stopping rule needs it).
"""
from __future__ import annotations

import numpy as np

from ..graph.batch import GraphBatch

# column layout of the kernels' tables: must match the #defines of cuda/convex_bp.cu (a test
# reads them from the source)
EDGE_FIELDS = ("ENTRY", "OWN", "KIND", "PARENT", "PATTERN", "WIDTH", "OTHER")
EDGE_REALS = ("SCALE", "RATIO")
REGION_FIELDS = ("ENTRY", "SIZE", "TOTAL", "EDGES", "DEGREE")
KINDS = {"SUM": 0, "MAX": 1, "FAST": 2, "FAST_T": 3}
_INT32_LIMIT = 2**31 - 1


class DeviceResult:
    """What ``DeviceBP.run`` returns; arrays live where the kernel set computes (xp arrays)."""

    def __init__(self, beliefs, dual, messages, sweeps, change, tol):
        self.beliefs, self.dual, self.messages, self.sweeps = beliefs, dual, messages, sweeps
        self._change, self._tol = change, tol

    @property
    def max_change(self) -> float:
        """Largest message change in the last sweep (inf if none ran); reading it synchronises."""
        if self._change is None:    # no sweep ran: inf, unless nothing sends messages at all
            return float("inf") if self.sweeps == 0 else 0.0
        return float(self._change.max()) if self._change.size else 0.0

    @property
    def converged(self) -> bool:
        return self.max_change < self._tol


class _Colour:
    """The device tables of one colour's block update."""

    def __init__(self, xp, dtype, edge_info, edge_real, entry_edge, region_info, use_fhat):
        self.edge_info = xp.asarray(edge_info, dtype=np.int32)
        self.edge_real = xp.asarray(edge_real, dtype=dtype)
        self.entry_edge = xp.asarray(entry_edge, dtype=np.int32)
        self.region_info = xp.asarray(region_info, dtype=np.int32)
        self.num_entries, self.num_regions = len(entry_edge), len(region_info)
        self.num_total = int(region_info[:, 2].max() + region_info[:, 1].max()) if len(region_info) else 0
        self.use_fhat = np.int32(use_fhat)


class DeviceBP:
    """Kernel-launching twin of ``ConvexBP`` for one GraphBatch (build once, run many times)."""

    def __init__(self, batch: GraphBatch, kernels):
        if max(batch.num_potentials, batch.num_messages) > _INT32_LIMIT:
            raise ValueError(f"batch too large for the kernels' int32 indices: {batch.num_potentials} "
                             f"potentials, {batch.num_messages} messages; split the batch")
        self.batch, self.kernels = batch, kernels
        xp, dtype = kernels.xp, kernels.dtype
        self.xp, self.dtype = xp, dtype
        self._patterns: dict[bytes, int] = {}
        self._pattern_list: list[np.ndarray] = []
        self.track_fhat = any(c.generic or not c.childless for c in batch.colours)
        colours = [self._colour(c) for c in batch.colours]
        self.colours = [_Colour(xp, dtype, *c) for c in colours]
        patterns = np.concatenate(self._pattern_list) if self._pattern_list else np.zeros(1)
        self.patterns = xp.asarray(patterns, dtype=np.int32)
        self.change_offset = np.concatenate([[0], np.cumsum([c.num_regions for c in self.colours])])
        self.scratch_size = max([c.num_total for c in self.colours], default=0)

        self.entry_index, self.entry_ptr, self.entry_message = (
            xp.asarray(a, dtype=np.int32) for a in self._reparameterise_lists(batch))
        self.num_listed = np.int32(len(self.entry_index))
        self.pairs = [(np.int32(pg.entries.size), np.int32(pg.message_a.shape[1]),
                       np.int32(pg.message_b.shape[1]),
                       xp.asarray(np.column_stack([pg.entries[:, 0], pg.message_a[:, 0],
                                                   pg.message_b[:, 0]]), dtype=np.int32))
                      for pg in batch.pair_groups]
        self._regions(batch)

    # --- host-side construction -------------------------------------------------------------
    def _pattern(self, offsets: np.ndarray) -> int:
        """Start of these (n_r, width) relative offsets in the shared pattern table."""
        key = offsets.astype(np.int32).tobytes()
        if key not in self._patterns:
            self._patterns[key] = sum(len(p) for p in self._pattern_list)
            self._pattern_list.append(offsets.astype(np.int32).ravel())
        return self._patterns[key]

    def _colour(self, plan):
        """(edge_info, edge_real, entry_edge, region_info, use_fhat) of one ColourPlan."""
        b = self.batch
        rows = []   # per group: (q of the edge's region, n_r, int fields, scale, ratio)
        for g in plan.fast:
            pairs = b.pair_groups[g.pair_group]
            n_r, n_o = g.own.shape[1], g.other.shape[1]
            # r is the table's first variable (its state picks a row) or its second (a column)
            kind = np.where(g.transposed, KINDS["FAST_T"], KINDS["FAST"])
            parent = pairs.entries[g.pairs, 0]
            rows.append((g, n_r, [g.own[:, 0], kind, parent, n_r, n_o, g.other[:, 0]]))
        for g in plan.generic:
            E, n_r, width = g.grouped.shape
            parent = g.grouped.reshape(E, -1).min(axis=1)
            relative = (g.grouped - parent[:, None, None]).reshape(E, -1)
            unique, which = np.unique(relative, axis=0, return_inverse=True)
            starts = np.array([self._pattern(u) for u in unique], dtype=np.int64)
            kind = KINDS["MAX"] if g.use_max else KINDS["SUM"]
            rows.append((g, n_r, [g.own[:, 0], kind, parent, starts[which.ravel()], width, 0]))

        q, size, fields, scale, ratio = [], [], [], [], []
        for g, n_r, values in rows:
            E = len(g.own)
            first = g.entries.start + n_r * np.arange(E)     # the edge's first entry (CPU order)
            q.append(plan.edge_entry_q[first])
            size.append(np.full(E, n_r))
            fields.append(np.stack([np.broadcast_to(np.asarray(v, dtype=np.int64), (E,)) for v in values], 1))
            scale.append(g.scale)
            ratio.append(plan.edge_entry_ratio[first])
        q, size, fields = np.concatenate(q), np.concatenate(size), np.concatenate(fields)
        order = np.argsort(q, kind="stable")     # a region's edges adjacent
        q, size, fields = q[order], size[order], fields[order]
        entry_start = np.concatenate([[0], np.cumsum(size)[:-1]])
        edge_info = np.column_stack([entry_start, fields])
        edge_real = np.column_stack([np.concatenate(scale)[order], np.concatenate(ratio)[order]])
        entry_edge = np.repeat(np.arange(len(q)), size)

        regions, first_edge, degree = np.unique(q, return_index=True, return_counts=True)
        region_info = np.column_stack([plan.region_entries[regions], size[first_edge], regions,
                                       first_edge, degree])
        return edge_info, edge_real, entry_edge, region_info, not plan.childless

    @staticmethod
    def _reparameterise_lists(b: GraphBatch):
        """The signed messages that make fhat, per potential entry that has any (see the kernel):
        (entries, ptr, signed).  Fast pairs are left out: pair_reparameterise adds theirs."""
        entries = np.concatenate([b.parent_entry, b.message_child_entry])
        signed = np.concatenate([b.parent_entry_message, ~np.arange(b.num_messages)])
        order = np.argsort(entries, kind="stable")
        entries, signed = entries[order], signed[order]
        first = np.flatnonzero(np.diff(entries, prepend=-1))   # where each listed entry starts
        return entries[first], np.append(first, len(entries)), signed

    def _regions(self, b: GraphBatch) -> None:
        """Every region (for beliefs and the dual), the per-sample sums and the belief levels."""
        xp, dtype = self.xp, self.dtype
        start, size, scale, sample = [], [], [], []
        for entries, s, owner in b.regions_by_size:
            start.append(entries[:, 0])
            size.append(np.full(len(entries), entries.shape[1]))
            scale.append(s)
            sample.append(owner)
        for pg in b.pair_groups:
            start.append(pg.entries[:, 0])
            size.append(np.full(len(pg.entries), pg.entries.shape[1]))
            scale.append(pg.scale)
            sample.append(pg.sample)
        # regions come in runs of equal size (by size, then pair groups): beliefs go run by run
        self.region_runs = []
        first = 0
        for run in size:
            if len(run):
                self.region_runs.append((first, len(run), int(run[0])))
                first += len(run)
        start, size, sample = (np.concatenate(a) for a in (start, size, sample))
        self.num_regions = len(start)
        self.region_entry = xp.asarray(start, dtype=np.int32)
        self.region_size = xp.asarray(size, dtype=np.int32)
        self.region_scale = xp.asarray(np.concatenate(scale), dtype=dtype)
        self.sample_sum = self._segments(np.arange(b.num_samples), sample, np.arange(len(sample)))
        self.belief_levels = [self._segments(np.unique(dst), dst, src)
                              for dst, src in b.belief_levels]

    def _segments(self, targets, key, source):
        """(count, out_index, ptr, source) for segment_sum: out[targets[j]] = sum over key == targets[j]."""
        xp = self.xp
        position = np.searchsorted(targets, key)
        order = np.argsort(position, kind="stable")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(position, minlength=len(targets)))])
        return (np.int32(len(targets)), xp.asarray(targets, dtype=np.int32),
                xp.asarray(ptr, dtype=np.int32), xp.asarray(np.asarray(source)[order], dtype=np.int32))

    # --- running ---------------------------------------------------------------------------------
    def _reparameterise(self, f, lam, fhat, pairs: bool) -> None:
        """fhat from scratch: f, then the listed entries' messages, then (if asked) fast pairs'."""
        launch = self.kernels.launch
        self.xp.copyto(fhat, f)
        launch("reparameterise", self.num_listed, (f, lam, fhat, self.num_listed, self.entry_index,
                                                   self.entry_ptr, self.entry_message))
        for count, n_a, n_b, info in self.pairs if pairs else ():
            launch("pair_reparameterise", count, (f, lam, fhat, count, n_a, n_b, info))

    def run(self, potentials, messages=None, max_sweeps: int = 1000, tol: float = 1e-6) -> DeviceResult:
        """Sweep until the largest message change is below tol, or max_sweeps (tol = 0: exactly
        max_sweeps, with no host synchronisation).  `potentials` and `messages` are device arrays
        (or anything xp.asarray takes: a DLPack-converted torch tensor is used without a copy)."""
        if max_sweeps < 0 or not tol >= 0:
            raise ValueError(f"max_sweeps = {max_sweeps} and tol = {tol} must be >= 0")
        xp, dtype, b, launch = self.xp, self.dtype, self.batch, self.kernels.launch
        f = xp.ascontiguousarray(xp.asarray(potentials), dtype=dtype)
        if f.shape != (b.num_potentials,):
            raise ValueError(f"potentials: expected a flat vector of {b.num_potentials} entries "
                             f"for this batch, got shape {f.shape}")
        if messages is None:
            lam = xp.zeros(b.num_messages, dtype=dtype)
        else:
            lam = xp.array(messages, dtype=dtype)      # a copy: the caller's array stays as it was
            if lam.shape != (b.num_messages,):
                raise ValueError(f"messages: expected {b.num_messages} entries for this batch, "
                                 f"got shape {lam.shape}")
        fhat = xp.empty(b.num_potentials, dtype=dtype)
        if self.track_fhat:
            self._reparameterise(f, lam, fhat, pairs=False)   # fast pairs' fhat is never read
        change = xp.zeros(int(self.change_offset[-1]), dtype=dtype) if self.colours else None
        mu = xp.empty(max([c.num_entries for c in self.colours], default=0), dtype=dtype)
        total = xp.empty(self.scratch_size, dtype=dtype)
        sweeps = 0
        while sweeps < max_sweeps and self.colours:
            for k, c in enumerate(self.colours):
                launch("edge_mu", c.num_entries, (f, fhat, lam, mu, np.int32(c.num_entries), c.entry_edge,
                                                  c.edge_info, c.edge_real, self.patterns))
                launch("region_update", c.num_regions,
                       (lam, fhat, f, mu, total, change[self.change_offset[k]:],
                        np.int32(c.num_regions), c.region_info, c.edge_info, c.edge_real,
                        self.patterns, c.use_fhat, np.int32(self.track_fhat)))
            sweeps += 1
            if tol > 0 and float(change.max()) < tol:
                break
        self._reparameterise(f, lam, fhat, pairs=True)
        regions = np.int32(self.num_regions)
        terms = xp.empty(self.num_regions, dtype=dtype)
        launch("region_dual", regions, (fhat, terms, regions, self.region_entry, self.region_size,
                                        self.region_scale))
        beliefs = xp.empty(b.num_potentials, dtype=dtype)
        for first, count, size in self.region_runs:
            entries = np.int32(count * size)
            launch("entry_beliefs", entries, (fhat, terms[first:], beliefs, entries, np.int32(size),
                                              self.region_entry[first:], self.region_scale[first:]))
        for count, out_index, ptr, source in self.belief_levels:
            launch("segment_sum", count, (beliefs, beliefs, count, out_index, ptr, source))
        dual = xp.empty(b.num_samples, dtype=dtype)
        count, out_index, ptr, source = self.sample_sum
        launch("segment_sum", count, (terms, dual, count, out_index, ptr, source))
        if not self.colours:     # nothing sends messages: the beliefs are exact already
            return DeviceResult(beliefs, dual, lam, 0, xp.zeros(0, dtype=dtype), tol)
        return DeviceResult(beliefs, dual, lam, sweeps, change if sweeps else None, tol)
