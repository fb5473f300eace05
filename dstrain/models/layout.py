"""Where each potential entry of a batch sits, and where its value comes from: ``RegionLayout``.

A model's outputs for a batch are one 1-D torch tensor, the *source* (unary scores, tables tied
across positions or samples, per-position tables, the outputs of a pairwise net -- whatever the
model computes, flattened and concatenated).  The batch's potentials are
``source[layout.source_index]`` in the ``GraphBatch`` layout: sample by sample, each sample's
regions in graph order, each region's table flattened in C order.  The learner sends the
potentials' gradient back along the same index (a sum onto the source), then autograd runs
from the source on.

Everything else the learner needs is derived here from the samples' ``GraphSpec``s alone:
the ground-truth entry of every region from the labels, each sample's message size, the unary
entries of every variable (running accuracy, MAP from beliefs) and, for ``exact``, the
chain view or the enumeration tables.  Samples with equal specs form a group; every array is
built per group with array arithmetic, no loop over samples.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..graph import GraphSpec
from ..graph.builders import chain

EXACT_MAX_STATES = 1 << 16   # joint states a sample may have for exact inference by enumeration


class _SpecTables:
    """Per-spec index arrays (sample-relative), shared by every layout that uses the spec."""

    def __init__(self, spec: GraphSpec):
        graph = spec.graph
        cards = np.asarray(graph.cardinalities, dtype=np.int64)
        sizes = np.asarray(graph.sizes, dtype=np.int64)
        self.num_variables, self.num_regions = len(cards), len(graph.regions)
        self.region_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        width = max((len(r) for r in graph.regions), default=1) or 1
        # truth entry of region r = region_offset[r] + sum_k y[variables[r, k]] * strides[r, k]
        self.variables = np.zeros((self.num_regions, width), dtype=np.int64)
        self.strides = np.zeros((self.num_regions, width), dtype=np.int64)
        for r, region in enumerate(graph.regions):
            shape = cards[list(region)]
            strides = np.concatenate([np.cumprod(shape[::-1])[::-1][1:], [1]]) if len(region) else []
            self.variables[r, :len(region)] = region
            self.strides[r, :len(region)] = strides
        # the unary region of every variable, when all have one and an equal state count
        unary = {region[0]: r for r, region in enumerate(graph.regions) if len(region) == 1}
        self.num_states = int(cards[0]) if len(cards) and np.all(cards == cards[0]) else None
        self.unary_start = None
        if self.num_states is not None and len(unary) == len(cards):
            self.unary_start = self.region_offset[[unary[v] for v in range(len(cards))]]
        self.log_joint_states = float(np.log(cards.astype(float)).sum())   # no overflow
        self.is_short_chain = spec.builder is chain and len(spec.args) >= 3 and spec.args[2] <= 1


@functools.lru_cache(maxsize=4096)
def _tables(spec: GraphSpec) -> _SpecTables:
    return _SpecTables(spec)


class RegionLayout:
    """A batch's potentials as ``source[source_index]`` over the samples' region graphs.

    `specs`: each sample's graph; `source_index` (N,): for every potential entry of the batch
    (GraphBatch layout), its position in the source; `source_size`: the source's length.
    """

    def __init__(self, specs: Sequence[GraphSpec], source_index: np.ndarray, source_size: int):
        self.specs = tuple(specs)
        if not self.specs:
            raise ValueError("RegionLayout: the batch is empty")
        sizes = np.array([s.num_potentials for s in self.specs], dtype=np.int64)
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_potentials = int(self.offset[-1])
        self.source_index = np.ascontiguousarray(source_index, dtype=np.int64)
        self.source_size = int(source_size)
        if self.source_index.shape != (self.num_potentials,):
            raise ValueError(f"RegionLayout: source_index has shape {self.source_index.shape}; "
                             f"the samples' graphs have {self.num_potentials} potential entries")
        if self.num_potentials and (self.source_index.min() < 0
                                    or self.source_index.max() >= self.source_size):
            raise ValueError(f"RegionLayout: source_index points outside the source of "
                             f"{self.source_size} entries")
        # samples grouped by spec, groups in order of first appearance
        first: dict[GraphSpec, list[int]] = {}
        for s, spec in enumerate(self.specs):
            first.setdefault(spec, []).append(s)
        self.groups = [(spec, np.array(samples, dtype=np.int64)) for spec, samples in first.items()]
        self._on: dict = {}
        self._unary = None

    @property
    def num_samples(self) -> int:
        return len(self.specs)

    def graphs(self, counting_numbers="convex", eps: float = 1.0):
        return [spec.build(counting_numbers, eps) for spec in self.specs]

    def message_sizes(self) -> np.ndarray:
        return np.array([spec.num_messages for spec in self.specs], dtype=np.int64)

    def on(self, device: torch.device) -> "DeviceLayout":
        """This layout's index arrays as tensors on `device` (made once, then cached)."""
        cached = self._on.get(device)
        if cached is None:
            cached = self._on[device] = DeviceLayout(self, device)
        return cached

    # --- ground truth ---------------------------------------------------------------------
    def truth(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions of the ground-truth entry of every labelled region, and its sample.

        `labels` (B, V_max): sample s's variables take labels[s, :V_s] (its graph's variables in
        order); entries beyond are ignored.  A label < 0 marks a variable without ground truth
        (an "ignore" pixel): regions that contain one have no truth entry (see ``ignored``)."""
        positions, owners = [], []
        for spec, samples, y, labelled in self._labelled_groups(labels):
            t = _tables(spec)
            within = (y[:, t.variables] * t.strides).sum(axis=2) + t.region_offset
            where = self.offset[samples, None] + within
            positions.append(where.ravel() if labelled is None else where[labelled])
            owners.append(np.repeat(samples, t.num_regions) if labelled is None
                          else np.broadcast_to(samples[:, None], where.shape)[labelled])
        return np.concatenate(positions), np.concatenate(owners)

    def ignored(self, labels: np.ndarray) -> np.ndarray:
        """Flat positions of every entry of the regions without ground truth (empty when every
        variable is labelled): the learner leaves their gradient at zero."""
        out = [np.zeros(0, dtype=np.int64)]
        for spec, samples, _, labelled in self._labelled_groups(labels):
            if labelled is None:
                continue
            t = _tables(spec)
            sizes = np.diff(np.append(t.region_offset, spec.num_potentials))
            sample, region = np.nonzero(~labelled)
            starts = self.offset[samples[sample]] + t.region_offset[region]
            out.append(np.repeat(starts - np.cumsum(np.append(0, sizes[region][:-1])),
                                 sizes[region]) + np.arange(sizes[region].sum()))
        return np.concatenate(out)

    def _labelled_groups(self, labels):
        """Per group: (spec, samples, labels (S, V) with unlabelled as 0, None if every region
        is labelled else the (S, R) mask of labelled regions)."""
        labels = np.asarray(labels)
        labels = labels.reshape(len(labels), -1)
        for spec, samples in self.groups:
            t = _tables(spec)
            y = labels[samples, :t.num_variables]
            if y.shape[1] < t.num_variables:
                raise InputError(f"labels: a graph of {t.num_variables} variables got "
                                 f"{y.shape[1]} labels per sample")
            if not y.size or y.min() >= 0:
                yield spec, samples, y, None
                continue
            missing = (y[:, t.variables] < 0) & (t.strides > 0)
            yield spec, samples, np.maximum(y, 0), ~missing.any(axis=2)

    # --- variables' unary entries ---------------------------------------------------------
    def unary_positions(self) -> list[np.ndarray | None]:
        """Per group: (S, V, C) flat positions of every variable's unary entries, or None where
        the group's variables lack unary regions or differ in state count."""
        if self._unary is None:
            self._unary = _unary_positions(self)
        return self._unary

    def correct_variables(self, unary_beliefs: list, labels: np.ndarray) -> tuple[int, int]:
        """(variables whose unary-belief argmax equals the label, variables counted), from the
        per-group (S, V, C) beliefs of ``unary_positions`` (numpy, or torch on any device)."""
        labels = np.asarray(labels).reshape(len(labels), -1)
        hits = count = 0
        for (spec, samples), beliefs in zip(self.groups, unary_beliefs):
            if beliefs is None:
                continue
            guess = beliefs.argmax(axis=2) if isinstance(beliefs, np.ndarray) \
                else beliefs.argmax(dim=2).cpu().numpy()
            truth = labels[samples, :guess.shape[1]]
            hits += int((guess == truth).sum())
            count += truth.size
        return hits, count

    # --- exact inference helpers ----------------------------------------------------------
    def chain_view(self, flat: np.ndarray, spec: GraphSpec, samples: np.ndarray):
        """A first-order chain group's potentials as unary (S, n, C) and pairwise (S, n-1, C, C)."""
        n, C = spec.args[0], spec.args[1]
        start = self.offset[samples, None]
        unary = flat[start + np.arange(n * C)].reshape(len(samples), n, C)
        pairs = spec.args[2] >= 1 and n > 1
        pairwise = flat[start + n * C + np.arange((n - 1) * C * C)].reshape(
            len(samples), n - 1, C, C) if pairs else np.zeros((len(samples), max(n - 1, 0), C, C))
        return unary, pairwise


def exact_kind(spec: GraphSpec) -> str:
    """How ``exact`` treats a graph: 'chain' (forward-backward on a first-order chain),
    'enumerate' (all joint states), or an InputError for graphs too large for either."""
    t = _tables(spec)
    if t.is_short_chain:
        return "chain"
    if t.log_joint_states <= np.log(EXACT_MAX_STATES) + 1e-9:
        return "enumerate"
    raise InputError(f"inference.algorithm exact needs a first-order chain (forward-backward) or "
                     f"a graph of at most {EXACT_MAX_STATES} joint states (enumeration); this "
                     f"graph has 10^{t.log_joint_states / np.log(10):.1f} ({spec.graph}): use "
                     f"converge or blend")


def _unary_positions(layout: RegionLayout) -> list:
    out = []
    for spec, samples in layout.groups:
        t = _tables(spec)
        if t.unary_start is None:
            out.append(None)
            continue
        out.append(layout.offset[samples, None, None] + t.unary_start[None, :, None]
                   + np.arange(t.num_states))
    return out


@functools.lru_cache(maxsize=64)
def enumeration_tables(spec: GraphSpec) -> tuple[np.ndarray, np.ndarray]:
    """(joint states (S, V), entry of every region at every joint state (S, R)), sample-relative."""
    t = _tables(spec)
    cards = spec.graph.cardinalities
    count = int(np.prod(cards))
    states = np.stack(np.unravel_index(np.arange(count), cards), axis=1).astype(np.int64)
    entries = (states[:, t.variables] * t.strides).sum(axis=2) + t.region_offset
    return states, entries


class DeviceLayout:
    """A RegionLayout's index arrays as tensors on one device (for the GPU path)."""

    def __init__(self, layout: RegionLayout, device: torch.device):
        self.source_index = torch.as_tensor(layout.source_index, device=device)
        self.unary_positions = [None if u is None else torch.as_tensor(u, device=device)
                                for u in layout.unary_positions()]
