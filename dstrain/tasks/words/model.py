"""The word-recognition model: a chain CRF over the characters of a word, potentials from torch.

A word of n letters is ``chain(n, C, order)``: unaries, then pairs at distance 1, 2, ... .  The
model's source for a batch is ``cat(unary scores (B, L, C) flattened, table_1, ..., table_order)``
and every potential entry is gathered from it with one index (``chain_layout``); the learner
sends the gradient back along the same index.  Where every word uses the same pair tables the
CPU engine exponentiates and multiplies each table once per batch (``ConvexBP.sharing``).
Decoding is exact Viterbi (order 0, 1, 2); the metrics are character and word accuracy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from ...errors import InputError
from ...graph import GraphSpec, chain
from ...inference.exact import chain2_viterbi, chain_viterbi
from ...models import Batch, RegionLayout, RegionPotentials, StructuredModel
from ...models.potentials import PairwiseTables, UnaryCNN, UnaryMLP


@dataclass
class WordOptions:
    """The config's ``model`` keys of the words model (checked by their types and ranges)."""

    unary: Literal["mlp", "cnn"] = "mlp"   # network giving each character's scores
    hidden: list[int] = field(default_factory=lambda: [512],    # MLP hidden layer sizes
                              metadata={"min_len": 1, "max_len": 3})
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32], metadata={"min_len": 1})
    order: int = field(default=2, metadata={"low": 0, "high": 3})   # pairs 1..order apart
    pairwise_shared: bool = True    # one table per distance, else one per edge position


def lengths_of(labels: np.ndarray) -> np.ndarray:
    """Each word's length: its labels before the -1 padding."""
    return (np.asarray(labels) >= 0).sum(axis=1).astype(np.int64)


@functools.lru_cache(maxsize=64)
def chain_layout(lengths: bytes, max_length: int, num_classes: int, order: int,
                 shared: bool) -> RegionLayout:
    """The layout of a batch of words (cached: fixed-length words give one layout for every
    batch, so its engine and device index arrays are made once)."""
    lengths = np.frombuffer(lengths, dtype=np.int64)
    C, L, B = num_classes, max_length, len(lengths)
    specs = [GraphSpec(chain, (int(n), C, order)) for n in lengths]
    sizes = lengths * C + sum(np.maximum(lengths - d, 0) for d in range(1, order + 1)) * C * C
    offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # where each distance's tables start in the source vector
    table_size = [C * C if shared else max(L - d, 0) * C * C for d in range(1, order + 1)]
    table_start = B * L * C + np.concatenate([[0], np.cumsum(table_size)[:-1]]).astype(np.int64)
    source_index = np.empty(int(offset[-1]), dtype=np.int64)
    for n in np.unique(lengths):   # words of one length at once
        samples = np.flatnonzero(lengths == n)
        start = offset[samples][:, None]
        source_index[start + np.arange(n * C)] = samples[:, None] * (L * C) + np.arange(n * C)
        base = n * C
        for d in range(1, order + 1):
            count = max(n - d, 0) * C * C
            within = np.arange(count) if not shared else np.arange(count) % (C * C)
            source_index[start + base + np.arange(count)] = table_start[d - 1] + within
            base += count
    return RegionLayout(specs, source_index, B * L * C + int(sum(table_size)))


class WordCRF(StructuredModel):
    """Unary net on each character image + pair tables at distances 1..order."""

    Options = WordOptions
    families = ("unary", "pairwise")
    variable_name = "char"

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
            raise InputError(f"model.unary = {unary!r}: expected 'mlp' or 'cnn'")
        self.pairwise = PairwiseTables(num_classes, order, max_length, pairwise_shared)

    @classmethod
    def from_data(cls, data, options: WordOptions) -> "WordCRF":
        return cls(data.image_shape, data.num_classes, data.max_length, unary=options.unary,
                   hidden=options.hidden, cnn_channels=options.cnn_channels, order=options.order,
                   pairwise_shared=options.pairwise_shared)

    def order_of(self, families: Sequence[str]) -> int:
        return self.order if "pairwise" in families else 0

    # --- the model interface ---------------------------------------------------------------
    def graphs(self, batch: Batch, families=families) -> list[GraphSpec]:
        order = self.order_of(families)
        return [GraphSpec(chain, (int(n), self.num_classes, order)) for n in lengths_of(batch.y)]

    def potentials(self, batch: Batch, families=families) -> RegionPotentials:
        order = self.order_of(families)
        return RegionPotentials(self.source(batch.x, order), self.layout(lengths_of(batch.y), order))

    def decode(self, batch: Batch, potentials: RegionPotentials, unary_beliefs) -> np.ndarray:
        """Exact Viterbi on the chain of each word (order 0, 1 or 2)."""
        lengths = lengths_of(batch.y)
        order = potentials.layout.specs[0].args[2]
        B, L, C = len(lengths), self.max_length, self.num_classes
        # the unary scores open the source vector: no second forward pass
        unary = potentials.source[:B * L * C].detach().double().cpu().numpy().reshape(B, L, C)
        pairs = self.pair_arrays(B, order)
        if order == 0:
            labels = unary.argmax(axis=2)
            labels[np.arange(L) >= lengths[:, None]] = -1
            return labels
        if order == 1:
            return chain_viterbi(unary, pairs[0], lengths)[0]
        if order == 2:
            return chain2_viterbi(unary, pairs[0], pairs[1], lengths)
        raise InputError(f"words: exact Viterbi decodes order <= 2, not {order}")

    def metrics(self, sums) -> dict[str, float]:
        return {"char_accuracy": sums["hits"] / max(sums["variables"], 1),
                "word_accuracy": sums["exact"] / max(sums["samples"], 1)}

    # --- words' own helpers ---------------------------------------------------------------
    def layout(self, lengths, order: int | None = None) -> RegionLayout:
        order = self.order if order is None else order
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        return chain_layout(lengths.tobytes(), self.max_length, self.num_classes, order,
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

    @torch.no_grad()
    def pair_arrays(self, batch_size: int, order: int) -> list[np.ndarray]:
        """The pair tables as (B, L - d, C, C) arrays, d = 1..order."""
        out = []
        for d, table in enumerate(list(self.pairwise.tables)[:order], start=1):
            table = table.detach().double().cpu().numpy()
            positions = max(self.max_length - d, 0)
            per_position = np.broadcast_to(table, (positions, *table.shape[-2:])) \
                if self.pairwise_shared else table
            out.append(np.broadcast_to(per_position, (batch_size, *per_position.shape)))
        return out
