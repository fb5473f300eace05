"""The word-recognition model: a chain CRF over the characters of a word, potentials from torch.

A word of n letters is ``chain(n, C, order)``: unaries, then pairs at distance 1, 2, ... .  The
potentials of a mini-batch are one flat vector in the ``GraphBatch`` layout, gathered from the
unary scores and the pair tables with one index (``ChainLayout.source_index``).  Training sends
the potentials' gradient back along the same index (a bincount onto the source, then autograd
from there): cheaper than autograd through the gather, whose backward serialises on the few
entries of a shared table that every word reuses.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from ..graph import RegionGraph, chain
from .potentials import PairwiseTables, UnaryCNN, UnaryMLP


@functools.lru_cache(maxsize=256)
def _chain_graph(length, num_classes, order, counting_numbers, eps) -> RegionGraph:
    # graphs are immutable: every step reuses the few (length, ...) combinations a data set has
    return chain(length, num_classes, order, counting_numbers=counting_numbers, eps=eps)


class ChainLayout:
    """Where each potential entry of a batch of chains sits, and where its value comes from.

    Samples are grouped by length; every array is built per group with array arithmetic.
    ``source_index[k]`` indexes ``cat(unary (B, L, C) flattened, table_1, ..., table_order)``.
    """

    def __init__(self, lengths, max_length: int, num_classes: int, order: int, shared: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_length, self.num_classes, self.order = max_length, num_classes, order
        C, L, B = num_classes, max_length, len(self.lengths)
        sizes = self.lengths * C + sum(np.maximum(self.lengths - d, 0) for d in range(1, order + 1)) * C * C
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_potentials = int(self.offset[-1])
        # where each distance's tables start in the source vector
        table_size = [C * C if shared else max(L - d, 0) * C * C for d in range(1, order + 1)]
        table_start = B * L * C + np.concatenate([[0], np.cumsum(table_size)[:-1]]).astype(np.int64)
        self.source_size = B * L * C + int(sum(table_size))   # entries of WordCRF.source

        self.source_index = np.empty(self.num_potentials, dtype=np.int64)
        self.groups = []   # (samples, n, unary positions (k, nC), {d: pair positions (k, (n-d)C^2)})
        for n in np.unique(self.lengths):
            samples = np.flatnonzero(self.lengths == n)
            start = self.offset[samples][:, None]
            unary_pos = start + np.arange(n * C)
            self.source_index[unary_pos] = samples[:, None] * (L * C) + np.arange(n * C)
            pair_pos, base = {}, n * C
            for d in range(1, order + 1):
                count = max(n - d, 0) * C * C
                pair_pos[d] = start + base + np.arange(count)
                within = np.arange(count) if not shared else np.arange(count) % (C * C)
                self.source_index[pair_pos[d]] = table_start[d - 1] + within
                base += count
            self.groups.append((samples, int(n), unary_pos, pair_pos))
        self._on: dict = {}

    def on(self, device: torch.device) -> "DeviceLayout":
        """This layout's fixed index arrays as tensors on `device` (made once, then cached)."""
        cached = self._on.get(device)
        if cached is None:
            cached = self._on[device] = DeviceLayout(self, device)
        return cached

    def graphs(self, counting_numbers="convex", eps=1.0) -> list[RegionGraph]:
        return [_chain_graph(int(n), self.num_classes, self.order, counting_numbers, float(eps))
                for n in self.lengths]

    def truth(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions of the ground-truth entry of every region, and each region's sample."""
        C = self.num_classes
        positions, owners = [], []
        for samples, n, unary_pos, pair_pos in self.groups:
            y = labels[samples, :n]
            parts = [unary_pos[:, 0:1] + np.arange(n) * C + y]
            for d in range(1, self.order + 1):
                if n > d:
                    parts.append(pair_pos[d][:, 0:1] + np.arange(n - d) * C * C
                                 + y[:, :n - d] * C + y[:, d:])
            block = np.concatenate(parts, axis=1)
            positions.append(block.ravel())
            owners.append(np.repeat(samples, block.shape[1]))
        return np.concatenate(positions), np.concatenate(owners)

    def correct_characters(self, beliefs, labels: np.ndarray) -> int:
        """How many characters the argmax of their unary belief gets right (a cheap running score).

        `beliefs`: the flat (N,) vector, numpy or a torch tensor on any device (only the argmax
        comes to the host), or each character's beliefs (B, max_length, C) (numpy)."""
        if beliefs.ndim == 3:
            return int(((beliefs.argmax(axis=2) == labels) & (labels >= 0)).sum())
        C, hits = self.num_classes, 0
        for k, (samples, n, unary_pos, _) in enumerate(self.groups):
            if isinstance(beliefs, torch.Tensor):
                picked = beliefs[self.on(beliefs.device).unary_positions[k]]
                guess = picked.reshape(len(samples), n, C).argmax(dim=2).cpu().numpy()
            else:
                guess = beliefs[unary_pos].reshape(len(samples), n, C).argmax(axis=2)
            hits += int((guess == labels[samples, :n]).sum())
        return hits

    def chain_arrays(self, flat: np.ndarray):
        """First-order view of a flat vector: unary (B, L, C), pairwise (B, L-1, C, C), zero-padded."""
        B, L, C = len(self.lengths), self.max_length, self.num_classes
        unary = np.zeros((B, L * C))
        pairwise = np.zeros((B, max(L - 1, 0) * C * C))
        for samples, n, unary_pos, pair_pos in self.groups:
            unary[samples[:, None], np.arange(n * C)] = flat[unary_pos]
            if self.order >= 1 and n > 1:
                pairwise[samples[:, None], np.arange((n - 1) * C * C)] = flat[pair_pos[1]]
        return unary.reshape(B, L, C), pairwise.reshape(B, max(L - 1, 0), C, C)

    def flat_from_chain(self, unary: np.ndarray, pairwise: np.ndarray) -> np.ndarray:
        """Inverse of chain_arrays for order <= 1 (e.g. exact marginals into the flat layout)."""
        flat = np.zeros(self.num_potentials)
        B = len(self.lengths)
        unary, pairwise = unary.reshape(B, -1), pairwise.reshape(B, -1)
        for samples, n, unary_pos, pair_pos in self.groups:
            flat[unary_pos] = unary[samples[:, None], np.arange(unary_pos.shape[1])]
            if self.order >= 1 and n > 1:
                flat[pair_pos[1]] = pairwise[samples[:, None], np.arange(pair_pos[1].shape[1])]
        return flat


class DeviceLayout:
    """A ChainLayout's index arrays as tensors on one device (for the GPU path)."""

    def __init__(self, layout: ChainLayout, device: torch.device):
        self.source_index = torch.as_tensor(layout.source_index, device=device)
        self.unary_positions = [torch.as_tensor(u.ravel(), device=device)
                                for _, _, u, _ in layout.groups]


@functools.lru_cache(maxsize=64)
def _cached_layout(lengths: bytes, max_length, num_classes, order, shared) -> ChainLayout:
    # fixed-length words give one layout for every batch: its device index arrays are made once
    return ChainLayout(np.frombuffer(lengths, dtype=np.int64), max_length, num_classes, order, shared)


class WordCRF(nn.Module):
    """Unary net + pair tables; ``potentials`` fills a batch's flat potential vector."""

    def __init__(self, image_shape, num_classes: int, max_length: int, unary: str = "mlp",
                 hidden=(512,), cnn_channels=(16, 32), order: int = 2, pairwise_shared: bool = True):
        super().__init__()
        self.num_classes, self.max_length, self.order = num_classes, max_length, order
        self.pairwise_shared = pairwise_shared
        if unary == "mlp":
            self.unary = UnaryMLP(tuple(image_shape), list(hidden), num_classes)
        elif unary == "cnn":
            self.unary = UnaryCNN(tuple(image_shape), list(cnn_channels), num_classes)
        else:
            raise ValueError(f"unary = {unary!r}: expected 'mlp' or 'cnn'")
        self.pairwise = PairwiseTables(num_classes, order, max_length, pairwise_shared)

    def layout(self, lengths, order: int | None = None) -> ChainLayout:
        order = self.order if order is None else order
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        return _cached_layout(lengths.tobytes(), self.max_length, self.num_classes, order,
                              self.pairwise_shared)

    def unary_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, L, H, W) -> (B, L, C)."""
        B, L = images.shape[:2]
        return self.unary(images.reshape(B * L, *images.shape[2:])).reshape(B, L, -1)

    def source(self, images: torch.Tensor, order: int) -> torch.Tensor:
        """cat(unary scores (B, L, C) flattened, pair tables 1..order): what potentials index."""
        parts = [self.unary_scores(images).reshape(-1)]
        parts += [table.reshape(-1) for table in list(self.pairwise.tables)[:order]]
        return torch.cat(parts)

    def potentials(self, images: torch.Tensor, layout: ChainLayout) -> torch.Tensor:
        """The flat potential vector of the batch, differentiable (tests; training pulls back)."""
        source = self.source(images, layout.order)
        return source[layout.on(source.device).source_index]
