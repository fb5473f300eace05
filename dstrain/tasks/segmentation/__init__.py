"""Semantic segmentation (the paper's third experiment, in kind): per-pixel class scores from a
fully convolutional net, with a CRF on top -- a 4-connected grid CRF (convex BP).

Data contract (docs/data.md): ``/{split}/x`` (N, C, H, W) uint8 or float32; ``/{split}/y``
(N, H, W) class ids, -1 = ignore; root attributes ``task = "segmentation"``, ``num_classes``,
optional ``class_names``.
"""
from __future__ import annotations

from .. import Task
from .data import SegmentationData, generate_segmentation, open_segmentation
from .model import GridCRF


class SegmentationTask(Task):
    name = "segmentation"
    default_model = "segmentation_grid"

    def open(self, path, split: str) -> SegmentationData:
        return open_segmentation(path, split)

    def generate(self, path, data_config, progress: bool = True):
        return generate_segmentation(path, num_train=data_config.num_train,
                                     num_val=data_config.num_val, num_test=data_config.num_test,
                                     seed=data_config.seed, progress=progress)

    def show(self, model, x, y, options, out):
        from .show import show
        return show(model, x, y, options, out)


__all__ = ["SegmentationTask", "GridCRF", "SegmentationData", "open_segmentation",
           "generate_segmentation"]
