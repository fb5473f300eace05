"""What every task's HDF5 reader shares: the error type, opening a file, validated root
attributes and split groups, and reading only some rows (each MPI rank reads only its shard).

Each task's data contract (dstrain/tasks/*/reader.py, docs/data.md) is checked on open; every
violation raises :class:`DataError` with one line naming the file, the dataset or attribute, and
what was expected.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError

__all__ = ["DataError", "ArraySplit", "SplitReader", "open_hdf5", "read_rows", "as_row_array", "check_task", "positive_int_attr",
           "split_group", "file_task"]

CHUNK_CACHE_BYTES = 32 * 2**20  # per-dataset chunk cache: random row reads re-hit recent chunks


class DataError(InputError):
    """A data file is missing or breaks its task's HDF5 contract."""


def read_rows(dataset: h5py.Dataset, sorted_rows: np.ndarray) -> np.ndarray:
    """``dataset[sorted_rows]`` for sorted unique rows, decompressing each touched chunk once.

    For chunked data, rows are grouped by the chunk that holds them and each group is read as one
    slice from its first to its last row, all inside that chunk, which HDF5 decompresses anyway.
    This returns exactly h5py's fancy read but avoids its per-index selection cost, which
    dominates random row reads (bench/results/choices.md). Unchunked data takes the plain fancy read.
    """
    if dataset.chunks is None:
        return dataset[sorted_rows]
    chunk_of_row = sorted_rows // dataset.chunks[0]
    group_starts = np.flatnonzero(np.diff(chunk_of_row, prepend=-1))
    parts = []
    for rows in np.split(sorted_rows, group_starts[1:]):
        first, last = int(rows[0]), int(rows[-1])
        block = dataset[first:last + 1]
        parts.append(block if len(rows) == len(block) else block[rows - first])
    return np.concatenate(parts)


def as_row_array(rows) -> np.ndarray:
    if isinstance(rows, np.ndarray):
        if rows.size and rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be integers, got an array of {rows.dtype}")
        return rows.astype(np.int64, copy=False).ravel()
    return np.fromiter((int(r) for r in rows), dtype=np.int64)


def open_hdf5(path, task: str = "words") -> h5py.File:
    """Open a data file for reading; `task` names the generator in the missing-file hint."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file; generate it with `dstrain data {task} --out {path}`")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; expected an HDF5 data file")
    try:
        return h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {error}") from None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def file_task(path) -> str | None:
    """The root attribute 'task' of a data file (None if the file or attribute is missing)."""
    try:
        with h5py.File(path, "r") as file:
            task = _text(file.attrs.get("task"))
    except (OSError, FileNotFoundError):
        return None
    return task if isinstance(task, str) else None


def check_task(file: h5py.File, path: Path, task: str) -> None:
    """The root attribute 'task' must equal `task`."""
    if "task" not in file.attrs:
        raise DataError(f"{path}: root attribute 'task' is missing; expected task = \"{task}\"")
    value = _text(file.attrs["task"])
    if not isinstance(value, str) or value != task:
        shown = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"{path}: root attribute 'task' is {shown!r}; expected \"{task}\"")


def positive_int_attr(file: h5py.File, path: Path, name: str) -> int:
    """A root attribute that must be a positive integer (a one-element array is fine too)."""
    if name not in file.attrs:
        raise DataError(f"{path}: root attribute '{name}' is missing; expected a positive integer")
    value = file.attrs[name]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_integer or value < 1:
        shown = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"{path}: root attribute '{name}' is {shown!r}; expected a positive integer")
    return int(value)


def split_group(file: h5py.File, path: Path, split: str, datasets: dict[str, str]) -> list:
    """The datasets of a split group, in the order of `datasets` (name -> what is expected)."""
    group = file.get(split)
    if not isinstance(group, h5py.Group):
        present = sorted(name for name, item in file.items() if isinstance(item, h5py.Group))
        names = " and ".join(datasets)
        raise DataError(f"{path}: group '/{split}' is missing; expected a split group with {names} "
                        f"(groups present: {', '.join(present) or 'none'})")
    out = []
    for name, expected in datasets.items():
        item = group.get(name)
        if not isinstance(item, h5py.Dataset):
            raise DataError(f"{path}: dataset '/{split}/{name}' is missing; expected {expected}")
        out.append(item)
    return out


class SplitReader:
    """What every split reader shares: opening a file of task `task`, rows on demand, closing.
    A subclass validates its contract in ``_validate(file)`` and sets ``num_samples``, ``_x`` and
    ``_y`` (the split's datasets) there; anything it raises closes the file.  ``read(rows)`` ->
    (x float32, scaled to [0, 1] when stored as uint8; y int64), only those rows, in the order
    asked (repeats allowed)."""

    _file = None

    def __init__(self, path, split: str, task: str):
        self.path, self.split = Path(path), split
        self._file = open_hdf5(self.path, task)
        try:
            check_task(self._file, self.path, task)
            self._validate(self._file)
        except OSError as error:  # h5py reports unreadable (e.g. truncated) data as OSError
            self.close()
            raise DataError(f"{self.path}: cannot read /{split} ({error}); the file looks "
                            f"truncated or corrupt") from None
        except BaseException:
            self.close()
            raise

    def _validate(self, file: h5py.File) -> None:
        raise NotImplementedError

    def read(self, rows):
        rows = as_row_array(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_samples):
            bad = rows[(rows < 0) | (rows >= self.num_samples)][0]
            raise IndexError(f"{self._where('x')}: row {bad} out of range [0, {self.num_samples})")
        unique, order = np.unique(rows, return_inverse=True)
        if unique.size == 0:
            x = np.zeros((0,) + self._x.shape[1:], np.float32)
            y = np.zeros((0,) + self._y.shape[1:], np.int64)
        else:
            try:
                x = read_rows(self._x, unique)[order]
                y = read_rows(self._y, unique)[order].astype(np.int64, copy=False)
            except OSError as error:
                raise DataError(f"{self._where('x')}: cannot read rows ({error}); the file looks "
                                f"truncated or corrupt") from None
        x = x.astype(np.float32, copy=False)
        if self._x.dtype == np.uint8:
            x /= 255  # uint8 0..255 -> float32 0..1 (exact at both ends)
        return x, y

    def __len__(self) -> int:
        return self.num_samples

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _where(self, dataset: str) -> str:
        return f"{self.path}: dataset '/{self.split}/{dataset}'"


class ArraySplit(SplitReader):
    """One split of a file with ``/{split}/x`` (N, ...) and ``/{split}/y`` (N, ...) for a task
    whose contract needs no more checks than these (a user's own task, say): root attribute
    ``task`` equal to `task`, x uint8 or float32, y integer, one row of each per sample.

    ``attrs``: the file's root attributes; ``x_shape``, ``y_shape``: one sample's shapes.
    ``read(rows)`` -> (x float32, scaled to [0, 1] when stored as uint8; y int64).
    """

    def _validate(self, file: h5py.File) -> None:
        split = self.split
        self.attrs = {k: _text(v) for k, v in file.attrs.items()}
        self._x, self._y = split_group(file, self.path, split,
                                       {"x": "(N, ...) inputs", "y": "(N, ...) labels"})
        if self._x.dtype not in (np.uint8, np.float32):
            raise DataError(f"{self.path}: dataset '/{split}/x' has dtype {self._x.dtype}; "
                            f"expected uint8 or float32")
        if self._y.dtype.kind not in "iu":
            raise DataError(f"{self.path}: dataset '/{split}/y' has dtype {self._y.dtype}; "
                            f"expected an integer type")
        if self._x.shape[:1] != self._y.shape[:1]:
            raise DataError(f"{self.path}: '/{split}/x' has {self._x.shape[0]} rows but "
                            f"'/{split}/y' has {self._y.shape[0]}; expected one of each per sample")
        self.num_samples = int(self._y.shape[0])
        self.x_shape, self.y_shape = tuple(self._x.shape[1:]), tuple(self._y.shape[1:])
