"""The image-tagging model: a fully connected CRF over K binary tags on top of a CNN (or an MLP on
feature vectors).

Tag k's unary table is (0, s_k), s_k the net's score; every pair of tags (i < j) has a 2x2 table,
one per pair learned for the whole data set (``pairwise: table``; zero at start, so the joint
model starts as the unary one) or computed per image from the net's features
(``pairwise: net``, a linear head, zero at start, times ``pair_scale``).  Decoding is a MAP
assignment: exhaustive search up to ``EXHAUSTIVE_TAGS`` tags, otherwise a greedy local search
(flip the tag that raises the score most, until none does) started from the marginals thresholded
at 0.5 and from the empty assignment, keeping the better -- never worse than thresholding, since
that is a start.  Metrics: Hamming error (the paper's prediction error), exact match,
example-based F1 and mean average precision of the marginals (from per-tag histograms, so it
sums over ranks).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from ...graph import GraphSpec, chain, fully_connected
from ...models import Batch, RegionPotentials, StructuredModel, stacked_potentials
from ...models.potentials import UnaryCNN, UnaryMLP

EXHAUSTIVE_TAGS = 12     # up to 2^12 joint states per image: exact MAP by enumeration
AP_BINS = 4096           # marginal histogram bins per tag for mean average precision


@dataclass
class TaggingOptions:
    """The config's ``model`` keys of the tagging model."""

    unary: Literal["auto", "mlp", "cnn"] = "auto"   # auto: cnn for images, mlp for feature vectors
    hidden: list[int] = field(default_factory=lambda: [256], metadata={"min_len": 1, "max_len": 3})
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64], metadata={"min_len": 1})
    # width of a hidden layer between the net and the heads; 0: the heads read the net's last
    # layer (the CNN's flattened conv features, the MLP's last hidden layer)
    features: int = field(default=128, metadata={"low": 0})
    pairwise: Literal["table", "net"] = "table"   # one 2x2 table per tag pair, or from the net
    # the pairwise net's tables are its head's outputs times this; 0: 1 / (K - 1) (pair_scores)
    pair_scale: float = field(default=0.0, metadata={"low": 0.0})


def pairs_of(num_tags: int) -> np.ndarray:
    """(E, 2) the tag pairs (i, j), i < j, in the order of ``fully_connected``."""
    return np.array(list(itertools.combinations(range(num_tags), 2)), dtype=np.int64).reshape(-1, 2)


class TaggingCRF(StructuredModel):
    Options = TaggingOptions
    families = ("unary", "pairwise")
    variable_name = "tag"

    def __init__(self, x_shape, num_tags: int, unary: str = "auto", hidden=(256,),
                 cnn_channels=(32, 64), features: int = 128, pairwise: str = "table",
                 pair_scale: float = 0.0):
        super().__init__()
        self.num_tags, self.pairwise_kind = num_tags, pairwise
        self.pair_scale = pair_scale or 1.0 / max(num_tags - 1, 1)
        self.pairs = pairs_of(num_tags)
        if unary == "auto":
            unary = "cnn" if len(x_shape) == 3 else "mlp"
        net = (UnaryCNN(tuple(x_shape), list(cnn_channels), features) if unary == "cnn"
               else UnaryMLP(tuple(x_shape), list(hidden), features))
        self.trunk = nn.Sequential(net, nn.ReLU()) if features else net
        width = net.out_features   # what the heads read
        self.unary_head = nn.Linear(width, num_tags)
        num_pairs = len(self.pairs)
        if pairwise == "table":
            self.pair_tables = nn.Parameter(torch.zeros(num_pairs, 2, 2))
        else:
            self.pair_head = nn.Linear(width, num_pairs * 4)
            nn.init.zeros_(self.pair_head.weight)
            nn.init.zeros_(self.pair_head.bias)

    @classmethod
    def from_data(cls, data, options: TaggingOptions) -> "TaggingCRF":
        return cls(data.x_shape, data.num_labels, options.unary, options.hidden,
                   options.cnn_channels, options.features, options.pairwise, options.pair_scale)

    def graph(self, families: Sequence[str]) -> GraphSpec:
        if "pairwise" in families:
            return GraphSpec(fully_connected, (self.num_tags, 2))
        return GraphSpec(chain, (self.num_tags, 2, 0))   # K unaries, no pairs

    def graphs(self, batch: Batch, families=families) -> list[GraphSpec]:
        return [self.graph(families)] * len(batch)

    def potentials(self, batch: Batch, families=families) -> RegionPotentials:
        hidden = self.trunk(batch.x)
        scores = self.unary_head(hidden)                               # (B, K)
        tables = [torch.stack([torch.zeros_like(scores), scores], dim=2)]   # (B, K, 2)
        if "pairwise" in families:
            tables.append(self.pair_tables[None] if self.pairwise_kind == "table"
                          else self.pair_scores(hidden))
        return stacked_potentials(self.graph(families), tables)

    def pair_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, E, 2, 2) the pairwise net's tables: its head's outputs times ``pair_scale``.

        In joint training a tag's field sums the tables of its K - 1 partners, so by default they
        are divided by K - 1: an Adam step then moves that sum as far as a step of the unary head
        moves the tag's own score (undivided, joint training of 38 tags falls far behind unary
        only: bench/results/tagging_table.md's notes).  Piecewise training fits each table
        alone, as its own classifier, where the division only slows it down: ``pair_scale: 1``
        there."""
        return self.pair_head(hidden).reshape(len(hidden), -1, 2, 2) * self.pair_scale

    # --- decoding -------------------------------------------------------------------------
    def split_potentials(self, potentials: RegionPotentials):
        """Unary (B, K, 2) and pair (B, E, 2, 2) tables of every image, numpy float64."""
        layout = potentials.layout
        flat = potentials.source.detach()[layout.on(potentials.source.device).source_index]
        flat = flat.double().cpu().numpy().reshape(layout.num_samples, -1)
        K = self.num_tags
        pairs = flat[:, 2 * K:].reshape(layout.num_samples, -1, 2, 2)
        return flat[:, :2 * K].reshape(-1, K, 2), pairs

    def decode(self, batch: Batch, potentials: RegionPotentials, unary_beliefs) -> np.ndarray:
        unary, pair = self.split_potentials(potentials)
        marginal = _as_numpy(unary_beliefs[0])[..., 1]
        return map_assignment(unary, pair, self.pairs[:pair.shape[1]], marginal)

    # --- metrics --------------------------------------------------------------------------
    def metric_sums(self, batch: Batch, predicted: np.ndarray, unary_beliefs) -> dict:
        y = np.asarray(batch.y).reshape(len(batch.y), self.num_tags)
        predicted = predicted.reshape(y.shape)
        hits = predicted == y
        true_positive = (predicted * y).sum(axis=1)
        size = predicted.sum(axis=1) + y.sum(axis=1)
        f1 = np.where(size > 0, 2 * true_positive / np.maximum(size, 1), 1.0)
        positives = np.zeros((self.num_tags, AP_BINS))
        negatives = np.zeros((self.num_tags, AP_BINS))
        if len(y):
            marginal = _as_numpy(unary_beliefs[0])[..., 1]
            bins = np.minimum((marginal * AP_BINS).astype(np.int64), AP_BINS - 1)
            tag = np.broadcast_to(np.arange(self.num_tags), y.shape)
            np.add.at(positives, (tag[y == 1], bins[y == 1]), 1)
            np.add.at(negatives, (tag[y == 0], bins[y == 0]), 1)
        return {"wrong": (~hits).sum(), "decisions": y.size, "exact": hits.all(axis=1).sum(),
                "f1": f1.sum(), "samples": len(y), "positives": positives, "negatives": negatives}

    def metrics(self, sums) -> dict[str, float]:
        return {"hamming_error": sums["wrong"] / max(sums["decisions"], 1),
                "exact_match": sums["exact"] / max(sums["samples"], 1),
                "example_f1": sums["f1"] / max(sums["samples"], 1),
                "mean_ap": mean_average_precision(sums["positives"], sums["negatives"])}


def _as_numpy(array) -> np.ndarray:
    return array.double().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def mean_average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Mean over tags with positives of the average precision, from (K, bins) histograms of the
    marginals (each bin a threshold; samples within a bin count as tied)."""
    tp = np.cumsum(positives[:, ::-1], axis=1)
    fp = np.cumsum(negatives[:, ::-1], axis=1)
    precision = tp / np.maximum(tp + fp, 1)
    total = positives.sum(axis=1)
    per_tag = (precision * positives[:, ::-1]).sum(axis=1) / np.maximum(total, 1)
    return float(per_tag[total > 0].mean()) if np.any(total > 0) else 0.0


def scores(unary: np.ndarray, pair: np.ndarray, pairs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F(y) of each image: unary (B, K, 2), pair (B or 1, E, 2, 2), y (B, K) -> (B,)."""
    rows = np.arange(len(y))[:, None]
    total = np.take_along_axis(unary, y[..., None], axis=2)[..., 0].sum(axis=1)
    if len(pairs):
        total = total + pair[rows if len(pair) > 1 else 0, np.arange(len(pairs)),
                             y[:, pairs[:, 0]], y[:, pairs[:, 1]]].sum(axis=1)
    return total


@functools.lru_cache(maxsize=4)
def _all_states(num_tags: int) -> np.ndarray:
    return np.array(list(itertools.product((0, 1), repeat=num_tags)), dtype=np.int64)


def map_assignment(unary, pair, pairs, marginal=None) -> np.ndarray:
    """The highest-scoring tags of each image (B, K): exhaustive for few tags, else local search
    from the thresholded marginals (if given) and from no tags, the better of the two."""
    B, K = unary.shape[:2]
    if K <= EXHAUSTIVE_TAGS:
        states = _all_states(K)
        every = np.stack([scores(unary[b:b + 1].repeat(len(states), 0),
                                 pair[b:b + 1] if len(pair) > 1 else pair, pairs, states)
                          for b in range(B)])
        return states[every.argmax(axis=1)]
    starts = [np.zeros((B, K), dtype=np.int64)]
    if marginal is not None:
        starts.append((marginal > 0.5).astype(np.int64))
    found = [local_search(unary, pair, pairs, y) for y in starts]
    best = np.stack([scores(unary, pair, pairs, y) for y in found]).argmax(axis=0)
    return np.stack(found)[best, np.arange(B)]


def local_search(unary, pair, pairs, y) -> np.ndarray:
    """Greedy ascent: flip the tag whose flip raises F(y) most, while one does."""
    B, K = unary.shape[:2]
    both = np.zeros((len(pair), K, K, 2, 2))          # both[b, k, j, a, c]: pair score of (y_k=a, y_j=c)
    both[:, pairs[:, 0], pairs[:, 1]] = pair
    both[:, pairs[:, 1], pairs[:, 0]] = pair.transpose(0, 1, 3, 2)
    y, rows = y.copy(), np.arange(B)
    for _ in range(4 * K):
        partner = np.broadcast_to(y[:, None, :, None, None], (B, K, K, 2, 1))
        gathered = np.take_along_axis(np.broadcast_to(both, (B, K, K, 2, 2)), partner, axis=4)
        own = unary + gathered[..., 0].sum(axis=2)     # (B, K, 2): F's terms of tag k at state a
        current = np.take_along_axis(own, y[..., None], axis=2)[..., 0]
        gain = np.take_along_axis(own, 1 - y[..., None], axis=2)[..., 0] - current
        k = gain.argmax(axis=1)
        better = gain[rows, k] > 1e-12
        if not better.any():
            break
        y[rows[better], k[better]] ^= 1
    return y
