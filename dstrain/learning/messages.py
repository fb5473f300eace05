"""Persistent per-sample messages for `blend` (the paper's algorithm 4): warm starts across steps.

Each sample keeps its message vector, keyed by its global sample id, for the whole run; a step
gathers the vectors of its samples into the batch layout (sample-major, as ``GraphBatch`` lays
them out) and scatters the updated ones back.  Under MPI each rank holds the store of its shard.
"""
from __future__ import annotations

import numpy as np


def concatenated_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated ranges [start, start + size) as one index array, without a Python loop."""
    total = int(sizes.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return shift + np.arange(total)


class MessageStore:
    """Message vectors of a fixed set of samples (zeros until first written)."""

    def __init__(self, sample_ids, sizes):
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if self.sample_ids.shape != self.sizes.shape:
            raise ValueError("MessageStore: one size per sample id is needed")
        order = np.argsort(self.sample_ids)
        self._sorted_ids, self._sorted_pos = self.sample_ids[order], order
        if len(self._sorted_ids) > 1 and np.any(np.diff(self._sorted_ids) == 0):
            raise ValueError("MessageStore: duplicate sample ids")
        self.offset = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.values = np.zeros(int(self.offset[-1]))

    def _index(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        where = np.searchsorted(self._sorted_ids, ids)
        where = np.minimum(where, len(self._sorted_ids) - 1)
        if len(ids) and np.any(self._sorted_ids[where] != ids):
            missing = ids[self._sorted_ids[where] != ids][:5].tolist()
            raise KeyError(f"MessageStore: sample ids {missing} are not held here")
        pos = self._sorted_pos[where]
        return concatenated_ranges(self.offset[pos], self.sizes[pos])

    def gather(self, ids) -> np.ndarray:
        """The messages of samples `ids`, concatenated in that order."""
        return self.values[self._index(ids)]

    def scatter(self, ids, messages: np.ndarray) -> None:
        self.values[self._index(ids)] = messages

    def of(self, sample_id: int) -> np.ndarray:
        return self.gather([sample_id])
