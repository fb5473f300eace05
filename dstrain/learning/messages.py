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

    def __init__(self, sample_ids, sizes, xp=np, dtype=np.float64):
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if self.sample_ids.shape != self.sizes.shape:
            raise ValueError("MessageStore: one size per sample id is needed")
        order = np.argsort(self.sample_ids)
        self._sorted_ids, self._sorted_pos = self.sample_ids[order], order
        if len(self._sorted_ids) > 1 and np.any(np.diff(self._sorted_ids) == 0):
            raise ValueError("MessageStore: duplicate sample ids")
        self.offset = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.xp = xp
        self.values = xp.zeros(int(self.offset[-1]), dtype=dtype)
        # equal sizes (words of one length: every sample) make the store a matrix, one row per
        # sample: a step takes whole rows instead of forming an index of every entry
        self._rows = self.values.reshape(len(self.sizes), -1) \
            if len(self.sizes) and np.all(self.sizes == self.sizes[0]) else None
        self._last = (None, None)   # a step gathers and then scatters the same ids: index once

    def _index(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        key = ids.tobytes()
        if self._last[0] == key:
            return self._last[1]
        where = np.searchsorted(self._sorted_ids, ids)
        where = np.minimum(where, len(self._sorted_ids) - 1)
        if len(ids) and np.any(self._sorted_ids[where] != ids):
            missing = ids[self._sorted_ids[where] != ids][:5].tolist()
            raise KeyError(f"MessageStore: sample ids {missing} are not held here")
        pos = self._sorted_pos[where]
        index = pos if self._rows is not None else concatenated_ranges(self.offset[pos],
                                                                       self.sizes[pos])
        index = index if self.xp is np else self.xp.asarray(index)   # on the device: one copy up
        self._last = (key, index)
        return index

    def gather(self, ids) -> np.ndarray:
        """The messages of samples `ids`, concatenated in that order."""
        if self._rows is not None:
            return self._rows[self._index(ids)].reshape(-1)
        return self.values[self._index(ids)]

    def scatter(self, ids, messages) -> None:
        messages = self.xp.asarray(messages, dtype=self.values.dtype)
        if self._rows is not None:
            self._rows[self._index(ids)] = messages.reshape(-1, self._rows.shape[1])
        else:
            self.values[self._index(ids)] = messages

    def of(self, sample_id: int) -> np.ndarray:
        return to_host(self.gather([sample_id]))

    def host_values(self) -> np.ndarray:
        """All values as a float64 numpy array (a copy from the device on a GPU)."""
        return to_host(self.values).astype(np.float64, copy=False)


def to_host(array) -> np.ndarray:
    """A numpy array from a numpy or CuPy one."""
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)
