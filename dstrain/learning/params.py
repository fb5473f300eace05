"""Run outputs as HDF5, written atomically: parameters (one dataset per name) and the persistent
blend messages by global sample id."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import InputError
from .messages import concatenated_ranges


def write_params(group: h5py.Group, model: torch.nn.Module) -> None:
    """One dataset per parameter name (the run's params.h5, a checkpoint's /params)."""
    for name, tensor in model.state_dict().items():
        group.create_dataset(name, data=tensor.detach().cpu().numpy())


def read_params(group: h5py.Group, model: torch.nn.Module, path, what: str) -> None:
    """Load what write_params wrote; errors name the file, the parameter and the shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(group.keys()))
    extra = sorted(set(group.keys()) - set(expected))
    if missing or extra:
        raise InputError(f"{path}: {what} of another model "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    state = {}
    for name, tensor in expected.items():
        value = np.asarray(group[name])
        if value.shape != tuple(tensor.shape):
            raise InputError(f"{path}: parameter {name} has shape {value.shape}, the model "
                             f"needs {tuple(tensor.shape)}")
        state[name] = torch.from_numpy(value).to(tensor.dtype)
    model.load_state_dict(state)


def save_params(model: torch.nn.Module, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        write_params(f, model)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)   # a reader never sees a half-written file


def load_params(model: torch.nn.Module, path: str | Path) -> None:
    """Load parameters saved by save_params."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such parameter file")
    with h5py.File(path, "r") as f:
        read_params(f, model, path, "parameters")


def gather_messages(store, comm):
    """Every rank's blend messages on rank 0, ordered by global sample id:
    (sample_id, offset (one more than samples), values); None on the other ranks (collective)."""
    ids, sizes, values = (comm.gather_rows(a) for a in (store.sample_ids, store.sizes,
                                                         store.host_values()))
    if not comm.is_root:
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.argsort(ids, kind="stable")
    return (ids[order], np.concatenate([[0], np.cumsum(sizes[order])]),
            values[concatenated_ranges(starts[order], sizes[order])])


def write_messages(group: h5py.Group, gathered) -> None:
    for name, data in zip(("sample_id", "offset", "values"), gathered):
        group.create_dataset(name, data=data)


def save_messages(store, comm, path: str | Path) -> None:
    """The persistent blend messages of all ranks in one file by global sample id (rank 0 writes)."""
    gathered = gather_messages(store, comm)
    if gathered is None:
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        write_messages(f, gathered)
    os.replace(tmp, path)


def load_messages(path: str | Path) -> dict[int, np.ndarray]:
    """sample id -> message vector, from a messages.h5 file."""
    with h5py.File(path, "r") as f:
        ids, offset, values = np.asarray(f["sample_id"]), np.asarray(f["offset"]), np.asarray(f["values"])
    return {int(i): values[offset[k]:offset[k + 1]] for k, i in enumerate(ids)}
