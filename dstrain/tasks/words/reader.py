"""Reader for word/sequence data sets that follow the words HDF5 contract (docs/data.md).

    /{train,val,test}/x   (N, L, H, W) uint8 or float32, zero beyond each sample's length
    /{train,val,test}/y   (N, L) integer label in [0, C), -1 beyond each sample's length
    root attributes       task = "words", num_classes = C

Nothing is hard-coded: image size, maximum length and class count come from the file. Opening
validates the layout and the labels (a chunked pass over ``y`` only; ``x`` is never loaded whole),
and every violation raises :class:`DataError` with a one-line message naming the file, the
dataset or attribute, and what was expected. ``WordsData.read(rows)`` reads only the requested
rows, so that each MPI rank touches only its own shard of the file.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ...data.hdf5 import (DataError, SplitReader, positive_int_attr, split_group)

__all__ = ["WordsData", "open_words"]

LABEL_CHECK_ROWS = 65536        # rows of y validated per read: bounded memory for any N

class WordsData(SplitReader):
    """One split of a words file: metadata on open, rows on demand.

    Attributes: ``path``, ``split``, ``num_samples`` (N), ``max_length`` (L), ``image_shape``
    (H, W), ``num_classes`` (C), ``lengths`` (int64, (N,): labels before the -1 padding).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, split: str):
        super().__init__(path, split, "words")

    def _validate(self, file) -> None:
        split = self.split
        self.num_classes = positive_int_attr(file, self.path, "num_classes")
        self._x, self._y = _split_datasets(file, self.path, split)
        self.num_samples, self.max_length = (int(n) for n in self._y.shape)
        self.image_shape = tuple(int(n) for n in self._x.shape[2:])
        self.lengths = _checked_lengths(self._y, self.num_classes, self._where("y"))

    def __repr__(self) -> str:
        return (f"WordsData({str(self.path)!r}, split={self.split!r}, num_samples={self.num_samples}, "
                f"max_length={self.max_length}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")



def open_words(path, split: str) -> WordsData:
    """Open one split (``"train"``, ``"val"``, ``"test"``, ...) of a words HDF5 file, validated."""
    return WordsData(path, split)


# ------------------------------------------------------------------------------------ validation

def _split_datasets(file: h5py.File, path: Path, split: str):
    """Check /split/x and /split/y exist with compatible shapes and dtypes; return them."""
    x, y = split_group(file, path, split, {"x": "(N, L, H, W) images", "y": "(N, L) labels"})
    if x.ndim != 4:
        raise DataError(f"{path}: dataset '/{split}/x' has shape {x.shape}; expected 4-D (N, L, H, W)")
    if y.ndim != 2:
        raise DataError(f"{path}: dataset '/{split}/y' has shape {y.shape}; expected 2-D (N, L)")
    if x.shape[:2] != y.shape:
        raise DataError(f"{path}: dataset '/{split}/x' has shape {x.shape} but '/{split}/y' has "
                        f"{y.shape}; expected the same (N, L)")
    if x.dtype not in (np.uint8, np.float32):
        raise DataError(f"{path}: dataset '/{split}/x' has dtype {x.dtype}; expected uint8 or float32")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: dataset '/{split}/y' has dtype {y.dtype}; expected an integer type")
    return x, y


def _checked_lengths(y: h5py.Dataset, num_classes: int, where: str) -> np.ndarray:
    """Validate the labels block by block and return each sample's length (int64, (N,))."""
    lengths = np.empty(y.shape[0], np.int64)
    for start in range(0, y.shape[0], LABEL_CHECK_ROWS):
        block = y[start:start + LABEL_CHECK_ROWS].astype(np.int64)
        _check_label_block(block, num_classes, where, start)
        lengths[start:start + len(block)] = (block >= 0).sum(axis=1)
    return lengths


def _check_label_block(block: np.ndarray, num_classes: int, where: str, first_row: int) -> None:
    """Raise DataError for labels outside [-1, C), -1 followed by a label, or an empty word."""
    def first_bad_row(bad_entries: np.ndarray) -> int:
        return int(np.flatnonzero(bad_entries.any(axis=1))[0])

    outside = (block < -1) | (block >= num_classes)
    if outside.any():
        row = first_bad_row(outside)
        value = block[row][outside[row]][0]
        raise DataError(f"{where}: label {value} in row {first_row + row} is outside "
                        f"[-1, {num_classes}); expected class ids 0..{num_classes - 1} and -1 for padding")
    padding = block == -1
    # Once a row has seen a -1, every later entry must be -1 too: padding is a suffix.
    after_padding = np.logical_or.accumulate(padding, axis=1) & ~padding
    if after_padding.any():
        raise DataError(f"{where}: row {first_row + first_bad_row(after_padding)} has a label after "
                        f"the -1 padding; expected -1 only as a suffix")
    empty = padding.all(axis=1)
    if empty.any():
        raise DataError(f"{where}: row {first_row + int(np.flatnonzero(empty)[0])} is a word of "
                        f"length 0; expected at least one label per sample")
