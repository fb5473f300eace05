"""The contract between a deep structured model and the learner.

A model is a torch module that, for a batch, says

* which region graph each sample has (``graphs``: a ``GraphSpec`` per sample, from the builders
  ``chain``, ``grid``, ``fully_connected`` or ``regions``);
* its outputs and where every potential entry is read from in them (``potentials``: a
  ``RegionPotentials`` -- a 1-D source tensor and a ``RegionLayout``);
* how to turn inference results into predictions (``decode``; by default the argmax of each
  variable's unary belief) and which metrics it reports (``metric_sums`` and ``metrics``).

The learner does the rest: the ground truth of every region from the labels, inference
(``exact``, convex BP with ``converge`` or ``blend``, ``local``), the loss and its gradient
with respect to the source (beliefs minus the truth indicator), ``torch.autograd.backward``,
and the distributed step.  A model's factor families are named (``families``; the first is the
unary one), so the training variants ``unary``, ``piecewise``, ``joint`` and ``pretrain_joint``
work for every model: a model asked for ``families=("unary",)`` leaves out every other region.
docs/models.md is the guide to writing one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ..graph import GraphSpec
from .layout import RegionLayout


@dataclass
class Batch:
    """One step's samples: inputs on the model's device, labels and global ids on the host."""

    x: torch.Tensor            # (B, ...) as the data file stores it, float, on the model's device
    y: np.ndarray              # (B, ...) labels as the data file stores them
    ids: np.ndarray | None = None   # global sample ids (blend keeps messages by them)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class RegionPotentials:
    """A batch's potentials on its region graphs: ``source[layout.source_index]``."""

    source: torch.Tensor       # 1-D, differentiable: every value a potential entry is read from
    layout: RegionLayout

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The outputs the learner's gradient is for (``torch.autograd.backward`` from them)."""
        return (self.source,)


@dataclass
class DenseCRFPotentials:
    """A batch's dense CRF (Gaussian kernels over pixels, inferred by mean-field): unary scores
    (B, C, H, W), kernel weights (2,) and label compatibility (C, C), all differentiable, and the
    kernels built from the batch's images (``dstrain.inference.DenseCRF``: fixed features)."""

    unary: torch.Tensor
    weights: torch.Tensor
    compatibility: torch.Tensor
    crf: object
    layout: RegionLayout            # the unaries alone: decoding and running scores read it

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.unary, self.weights, self.compatibility)


@dataclass
class NoOptions:
    """A model without config keys of its own."""


class StructuredModel(nn.Module):
    """Base class of every model dstrain trains (see the module docstring and docs/models.md).

    Subclasses set ``Options`` (a dataclass: the keys of the config's ``model`` section, with
    defaults) and implement ``from_data``, ``graphs`` and ``potentials``.
    """

    families: ClassVar[tuple[str, ...]] = ("unary", "pairwise")
    Options: ClassVar[type] = NoOptions
    variable_name: ClassVar[str] = "variable"   # the running train accuracy's key: train_<name>_accuracy
    logged_metrics: ClassVar[tuple[str, ...] | None] = None   # shown in the log line (None: all)

    @classmethod
    def from_data(cls, data, options) -> "StructuredModel":
        """The model for a data split (its attributes: sizes, class counts) and the options."""
        raise NotImplementedError(f"{cls.__name__}.from_data")

    def graphs(self, batch: Batch, families: Sequence[str]) -> list[GraphSpec]:
        """Each sample's graph with the regions of `families` (labels may set the sizes, e.g.
        a word's length; their values must not matter)."""
        raise NotImplementedError(f"{type(self).__name__}.graphs")

    def potentials(self, batch: Batch, families: Sequence[str]) -> RegionPotentials:
        """The batch's potentials on ``graphs(batch, families)``, differentiable."""
        raise NotImplementedError(f"{type(self).__name__}.potentials")

    # --- predictions and metrics (defaults: per-variable MAP from the unary beliefs) -------
    def decode(self, batch: Batch, potentials: RegionPotentials, unary_beliefs: list) -> np.ndarray:
        """Predicted labels shaped like ``batch.y`` (-1 where a sample has no variable).

        `unary_beliefs`: per group of ``potentials.layout``, (S, V, C) beliefs of each variable
        after inference (None for groups without uniform unary regions)."""
        labels = np.full(np.shape(batch.y), -1, dtype=np.int64)
        flat = labels.reshape(len(labels), -1)
        for (_, samples), beliefs in zip(potentials.layout.groups, unary_beliefs):
            if beliefs is None:
                raise NotImplementedError(f"{type(self).__name__}.decode: the default decoder "
                                          "needs a unary region of equal size on every variable")
            guess = beliefs.argmax(axis=2) if isinstance(beliefs, np.ndarray) \
                else beliefs.argmax(dim=2).cpu().numpy()
            flat[samples[:, None], np.arange(guess.shape[1])] = guess
        return labels

    def metric_sums(self, batch: Batch, predicted: np.ndarray, unary_beliefs: list) -> dict:
        """Numbers or arrays summed over batches and ranks, from which ``metrics`` computes the
        report; `unary_beliefs` as in ``decode`` (e.g. for a ranking metric)."""
        y = np.asarray(batch.y).reshape(len(batch.y), -1)
        predicted = predicted.reshape(len(y), -1)
        valid = y >= 0
        hits = (predicted == y) & valid
        return {"hits": hits.sum(), "variables": valid.sum(),
                "exact": (hits.sum(axis=1) == valid.sum(axis=1)).sum(), "samples": len(y)}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The reported metrics (names as in metrics.jsonl, without the split prefix)."""
        return {"variable_accuracy": sums["hits"] / max(sums["variables"], 1),
                "exact_match": sums["exact"] / max(sums["samples"], 1)}



def stacked_potentials(graph: GraphSpec, tables: Sequence[torch.Tensor]) -> RegionPotentials:
    """Potentials of a batch whose samples all have `graph`, from tables stacked by region.

    ``tables[k]`` has shape (B, R_k, *shape): the next R_k regions of every sample, in graph
    order, each with its table.  Tables can be tied: a leading dimension of 1 (or one expanded
    with ``torch.expand``) shares the tables among all samples (a pair table per edge learned
    for the whole data set), and an expanded region dimension shares one table among the R_k
    regions (one table per direction of a grid, say); a tied table is one block of the source,
    read by every region that uses it.  The graph's regions must be covered in order: unaries
    (B, V, C), then pairs (B, E, C, C), and so on.
    """
    batch = max(t.shape[0] for t in tables)
    blocks, keys = [], []
    for t in tables:
        by_sample = t.shape[0] == 1 or t.stride(0) == 0
        by_region = t.shape[1] > 1 and t.stride(1) == 0
        blocks.append(t[:1 if by_sample else None, :1 if by_region else None].reshape(-1))
        keys.append((tuple(t.shape[1:]), by_sample and batch > 1, by_region))
    return RegionPotentials(torch.cat(blocks), _stacked_layout(graph, batch, tuple(keys)))


@functools.lru_cache(maxsize=256)
def _stacked_layout(graph: GraphSpec, batch: int, keys: tuple) -> RegionLayout:
    sizes = [int(np.prod(shape)) for shape, _, _ in keys]
    per_sample = sum(sizes)
    if per_sample != graph.num_potentials:
        raise ValueError(f"stacked_potentials: the tables hold {per_sample} entries per sample, "
                         f"the graph {graph.graph} has {graph.num_potentials}")
    parts, start = [], 0
    for (shape, by_sample, by_region), size in zip(keys, sizes):
        count, table = shape[0], size // shape[0]        # regions, entries of one region's table
        region = np.zeros(count, np.int64) if by_region else np.arange(count)
        within = (region[:, None] * table + np.arange(table)).ravel()    # (size,)
        block = table * (1 if by_region else count)      # source entries per sample
        rows = np.zeros(batch, np.int64) if by_sample else np.arange(batch)
        parts.append(start + rows[:, None] * block + within)
        start += block * (1 if by_sample else batch)
    return RegionLayout([graph] * batch, np.concatenate(parts, axis=1).ravel(), start)
