"""Run outputs as HDF5, written atomically: parameters (one dataset per name) and the persistent
blend messages by global sample id."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .messages import _segments


def save_params(model: torch.nn.Module, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, tensor in model.state_dict().items():
            f.create_dataset(name, data=tensor.detach().cpu().numpy())
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)   # a reader never sees a half-written file


def load_params(model: torch.nn.Module, path: str | Path) -> None:
    """Load parameters saved by save_params; errors name the file and the parameter."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such parameter file")
    expected = model.state_dict()
    with h5py.File(path, "r") as f:
        missing = sorted(set(expected) - set(f.keys()))
        extra = sorted(set(f.keys()) - set(expected))
        if missing or extra:
            raise ValueError(f"{path}: parameters do not match the model "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
        state = {}
        for name, tensor in expected.items():
            value = np.asarray(f[name])
            if value.shape != tuple(tensor.shape):
                raise ValueError(f"{path}: parameter {name} has shape {value.shape}, the model "
                                 f"needs {tuple(tensor.shape)}")
            state[name] = torch.from_numpy(value).to(tensor.dtype)
    model.load_state_dict(state)


def save_messages(store, comm, path: str | Path) -> None:
    """The persistent blend messages of all ranks, gathered on rank 0, by global sample id.

    Datasets: ``sample_id`` (sorted), ``offset`` (into ``values``, one more than samples), ``values``.
    """
    ids, sizes, values = (comm.gather_rows(a) for a in (store.sample_ids, store.sizes, store.values))
    if not comm.is_root:
        return
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.argsort(ids, kind="stable")
    ordered = values[_segments(starts[order], sizes[order])]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("sample_id", data=ids[order])
        f.create_dataset("offset", data=np.concatenate([[0], np.cumsum(sizes[order])]))
        f.create_dataset("values", data=ordered)
    os.replace(tmp, path)


def load_messages(path: str | Path) -> dict[int, np.ndarray]:
    """sample id -> message vector, from a messages.h5 file."""
    with h5py.File(path, "r") as f:
        ids, offset, values = np.asarray(f["sample_id"]), np.asarray(f["offset"]), np.asarray(f["values"])
    return {int(i): values[offset[k]:offset[k + 1]] for k, i in enumerate(ids)}
