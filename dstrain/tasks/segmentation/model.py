"""Semantic segmentation on a 4- or 8-connected grid CRF: a fully convolutional net gives each
pixel's class scores, and each pair of neighbouring pixels a C x C table -- one per direction
(right, down; with 8 neighbours also down-right and down-left), learned
for the whole data set (``pairwise: table``), or computed from the net's features at both pixels
and the direction (``pairwise: net``: input-dependent, zero at start).  Inference is convex BP
on the grid (``converge``, or ``blend`` with each image's messages kept by global id).  Pixels
labelled -1 (ignore) contribute no gradient.  Metrics: pixel accuracy, mean IoU and each
class's IoU, from a confusion matrix summed over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from ...graph import GraphSpec, chain, grid
from ...models import (Batch, DenseCRFPotentials, RegionPotentials, StructuredModel,
                       stacked_potentials)


@dataclass
class GridOptions:
    """The config's ``model`` keys of the grid segmentation model."""

    depth: int = field(default=3, metadata={"low": 1})     # 3x3 conv layers of the unary net
    width: int = field(default=32, metadata={"low": 1})    # their channels
    pairwise: Literal["table", "net"] = "net"   # per direction, or per edge from the features
    # neighbours of a pixel: 4, or 8 (diagonal pairs too, with their own direction tables / heads)
    connectivity: Literal[4, 8] = 4


class PixelNet(nn.Module):
    """A fully convolutional net: `depth` 3x3 convolutions with ReLU, no downsampling (so any
    image size from 1x1 works); returns the last hidden features (B, width, H, W)."""

    def __init__(self, in_channels: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(depth):
            layers += [nn.Conv2d(in_channels if k == 0 else width, width, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def confusion(predicted: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts of (true class, predicted class) over the labelled pixels (y >= 0)."""
    valid = y >= 0
    return np.bincount(y[valid] * num_classes + predicted[valid],
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(matrix: np.ndarray, class_names) -> dict[str, float]:
    """Pixel accuracy, mean IoU over the classes that occur (in truth or prediction), per-class IoU."""
    hits = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    report = {"pixel_accuracy": hits.sum() / max(matrix.sum(), 1),
              "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0}
    report.update({f"iou_{name}": float(0.0 if np.isnan(v) else v)
                   for name, v in zip(class_names, iou)})
    return report


class SegmentationMetrics:
    """Metrics shared by the segmentation models (mixed into StructuredModel subclasses)."""

    variable_name = "pixel"
    logged_metrics = ("pixel_accuracy", "mean_iou")

    def metric_sums(self, batch: Batch, predicted: np.ndarray, unary_beliefs) -> dict:
        y = np.asarray(batch.y)
        return {"confusion": confusion(predicted.reshape(y.shape), y, self.num_classes)}

    def metrics(self, sums) -> dict[str, float]:
        return segmentation_metrics(sums["confusion"], self.class_names)


class GridCRF(SegmentationMetrics, StructuredModel):
    Options = GridOptions
    families = ("unary", "pairwise")

    def __init__(self, image_shape, num_classes: int, class_names=None, depth: int = 3,
                 width: int = 32, pairwise: str = "net", connectivity: int = 4):
        super().__init__()
        if connectivity not in (4, 8):
            raise ValueError(f"GridCRF: connectivity must be 4 or 8, got {connectivity}")
        channels, self.height, self.width = image_shape
        self.num_classes, self.pairwise_kind = num_classes, pairwise
        self.connectivity = connectivity
        directions = 2 if connectivity == 4 else 4   # right, down (, down-right, down-left)
        self.class_names = list(class_names or [f"class{c}" for c in range(num_classes)])
        self.features = PixelNet(channels, width, depth)
        self.unary_head = nn.Conv2d(width, num_classes, 1)
        C2 = num_classes * num_classes
        if pairwise == "table":   # one per direction, in the graph's order of pair families
            self.tables = nn.Parameter(torch.zeros(directions, num_classes, num_classes))
        else:   # both pixels' features -> C x C scores, one head per direction
            self.pair_heads = nn.ModuleList(nn.Conv2d(2 * width, C2, 1) for _ in range(directions))
            for head in self.pair_heads:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    @classmethod
    def from_data(cls, data, options: GridOptions) -> "GridCRF":
        return cls(data.image_shape, data.num_classes, data.class_names, options.depth,
                   options.width, options.pairwise, options.connectivity)

    def graph(self, families: Sequence[str]) -> GraphSpec:
        if "pairwise" in families:
            # 4-connected keeps its old spec (no connectivity argument): same cache keys as before
            extra = () if self.connectivity == 4 else (8,)
            return GraphSpec(grid, (self.height, self.width, self.num_classes, *extra))
        return GraphSpec(chain, (self.height * self.width, self.num_classes, 0))   # unaries

    def graphs(self, batch: Batch, families=families) -> list[GraphSpec]:
        return [self.graph(families)] * len(batch)

    def potentials(self, batch: Batch, families=families) -> RegionPotentials:
        B, C = len(batch), self.num_classes
        hidden = self.features(batch.x)                                   # (B, F, H, W)
        unary = self.unary_head(hidden).permute(0, 2, 3, 1).reshape(B, -1, C)
        tables = [unary]
        if "pairwise" in families:
            H, W = self.height, self.width
            counts = [H * (W - 1), (H - 1) * W]   # pairs per direction
            if self.connectivity == 8:
                counts += [(H - 1) * (W - 1)] * 2
            if self.pairwise_kind == "table":
                tables += [self.tables[k].expand(1, n, C, C) for k, n in enumerate(counts)]
            else:   # (first pixel, second pixel) of each pair, as the grid builder orders them
                ends = [(hidden[..., :, :-1], hidden[..., :, 1:]),          # right
                        (hidden[..., :-1, :], hidden[..., 1:, :])]          # down
                if self.connectivity == 8:
                    ends += [(hidden[..., :-1, :-1], hidden[..., 1:, 1:]),  # down-right
                             (hidden[..., :-1, 1:], hidden[..., 1:, :-1])]  # down-left
                for head, (first, second) in zip(self.pair_heads, ends):
                    pair = head(torch.cat([first, second], dim=1))
                    tables.append(pair.permute(0, 2, 3, 1).reshape(B, -1, C, C))
        return stacked_potentials(self.graph(families), tables)


# ------------------------------------------------------------------ the dense CRF (mean-field)

@dataclass
class DenseOptions:
    """The config's ``model`` keys of the dense-CRF segmentation model."""

    depth: int = field(default=3, metadata={"low": 1})     # 3x3 conv layers of the unary net
    width: int = field(default=32, metadata={"low": 1})    # their channels
    iterations: int = field(default=5, metadata={"low": 1})   # mean-field updates per step
    spatial_sxy: float = field(default=3.0, metadata={"low": 0})     # smoothness kernel, pixels
    bilateral_sxy: float = field(default=8.0, metadata={"low": 0})   # appearance kernel, pixels
    bilateral_srgb: float = field(default=13.0, metadata={"low": 0})  # ... and colour (0..255)
    spatial_weight: float = 1.0     # the kernels' weights at start (learned)
    bilateral_weight: float = 1.0


class DenseCRFModel(SegmentationMetrics, StructuredModel):
    """Per-pixel scores from a fully convolutional net and a fully connected CRF with Gaussian
    kernels (smoothness: position; appearance: position and colour, from the first three input
    channels in 0..255 units); mean-field inference, trained by the paper's algorithm: the
    gradients of the unary scores, kernel weights and compatibility come from filtering the
    marginals and the truth (dstrain.inference.DenseCRF), not from autograd through the
    iterations.  ``inference.eps`` is the temperature; the algorithm is always mean-field."""

    Options = DenseOptions
    families = ("unary", "pairwise")

    def __init__(self, image_shape, num_classes: int, class_names=None, options=DenseOptions()):
        super().__init__()
        channels, self.height, self.width = image_shape
        self.num_classes, self.options = num_classes, options
        self.class_names = list(class_names or [f"class{c}" for c in range(num_classes)])
        self.features = PixelNet(channels, options.width, options.depth)
        self.unary_head = nn.Conv2d(options.width, num_classes, 1)
        self.kernel_weights = nn.Parameter(torch.tensor([options.spatial_weight,
                                                         options.bilateral_weight]))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_classes))   # Potts at start

    @classmethod
    def from_data(cls, data, options: DenseOptions) -> "DenseCRFModel":
        return cls(data.image_shape, data.num_classes, data.class_names, options)

    def unary_graph(self) -> GraphSpec:
        return GraphSpec(chain, (self.height * self.width, self.num_classes, 0))

    def graphs(self, batch: Batch, families=families) -> list[GraphSpec]:
        return [self.unary_graph()] * len(batch)   # no region graph: mean-field has no messages

    def potentials(self, batch: Batch, families=families):
        from ...inference import DenseCRF

        B, C = len(batch), self.num_classes
        unary = self.unary_head(self.features(batch.x))                    # (B, C, H, W)
        unaries = stacked_potentials(self.unary_graph(),
                                     [unary.permute(0, 2, 3, 1).reshape(B, -1, C)])
        if "pairwise" not in families:
            return unaries
        o = self.options
        colours = batch.x[:, :3].detach() * 255
        crf = DenseCRF(colours, o.spatial_sxy, o.bilateral_sxy, o.bilateral_srgb,
                       iterations=o.iterations, channels_last=False, dtype=unary.dtype)
        return DenseCRFPotentials(unary, self.kernel_weights, self.compatibility, crf,
                                  unaries.layout)
