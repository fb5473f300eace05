"""The data layer every task's reader builds on: HDF5 helpers and the data error.

Each task (dstrain/tasks/) has its own contract, generator and reader; nothing here knows a task.
"""
from .hdf5 import ArraySplit, DataError, as_row_array, file_task, open_hdf5, read_rows

__all__ = ["ArraySplit", "DataError", "open_hdf5", "read_rows", "as_row_array", "file_task"]
