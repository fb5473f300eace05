"""Image tagging (the paper's Flickr experiment, in kind): a fully connected CRF over K binary tags.

Data contract (docs/data.md): ``/{split}/x`` (N, D) features or (N, C, H, W) images, uint8 or
float32; ``/{split}/y`` (N, K) in {0, 1}; root attributes ``task = "tagging"``, ``num_labels``,
optional ``tag_names``.
"""
from __future__ import annotations

from .. import Task
from .data import TaggingData, generate_tagging, open_tagging
from .model import TaggingCRF


class TaggingTask(Task):
    name = "tagging"
    default_model = "tagging"

    def open(self, path, split: str) -> TaggingData:
        return open_tagging(path, split)

    def generate(self, path, data_config, progress: bool = True):
        return generate_tagging(path, num_train=data_config.num_train, num_val=data_config.num_val,
                                num_test=data_config.num_test, seed=data_config.seed,
                                progress=progress)


__all__ = ["TaggingTask", "TaggingCRF", "TaggingData", "open_tagging", "generate_tagging"]
