"""Word recognition (the paper's first experiment): a chain CRF over each word's letters.

Data contract (docs/data.md): ``/{split}/x`` (N, L, H, W) uint8 or float32, zero beyond each
word; ``/{split}/y`` (N, L) class ids, -1 beyond each word; root attributes ``task = "words"``
and ``num_classes``.
"""
from __future__ import annotations

from .. import Task
from .data import generate_words
from .model import WordCRF
from .reader import WordsData, open_words


class WordsTask(Task):
    name = "words"
    default_model = "words"

    def open(self, path, split: str) -> WordsData:
        return open_words(path, split)

    def generate(self, path, data_config, progress: bool = True):
        return generate_words(path, num_train=data_config.num_train, num_val=data_config.num_val,
                              num_test=data_config.num_test, seed=data_config.seed,
                              progress=progress)


__all__ = ["WordsTask", "WordCRF", "WordsData", "open_words", "generate_words"]
