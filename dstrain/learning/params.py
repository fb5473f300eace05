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


def write_messages(group: h5py.Group | None, store, comm) -> None:
    """Collective: every rank's blend messages into `group` on rank 0 (None on the others), by
    global sample id.  Rank 0 receives and writes one rank's shard at a time, so it never holds
    more than its own shard and one other: a data set whose messages only fit spread over the
    ranks is saved the same way."""
    ids, sizes = comm.gather_rows(store.sample_ids), comm.gather_rows(store.sizes)
    counts = comm.gather_rows(np.array([store.offset[-1]], dtype=np.int64))
    values = store.host_values()
    # the trainer's shards are ascending blocks of ids in rank order: concatenated in rank order
    # they are already sorted, which the readers need (they search the ids)
    in_order = np.array([1 if comm.is_root and np.all(np.diff(ids) > 0) else 0], dtype=np.int64)
    if not comm.broadcast_(in_order)[0]:
        _write_gathered(group, ids, sizes, comm.gather_rows(values), comm)
        return
    if not comm.is_root:
        comm.send_(values, dest=0)
        return
    offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    group.create_dataset("sample_id", data=ids)
    group.create_dataset("offset", data=offset)
    out = group.create_dataset("values", shape=(int(offset[-1]),), dtype=np.float64)
    start = 0
    # one buffer for every received shard: a new one per rank would briefly hold two
    received = np.empty(int(max(counts[1:], default=0)))
    for rank, count in enumerate(counts):
        part = values if rank == 0 else comm.recv_(received[:int(count)], source=rank)
        out[start:start + len(part)] = part
        start += len(part)


def _write_gathered(group, ids, sizes, values, comm) -> None:
    """The general case (shards in any order): everything gathered on rank 0, then sorted."""
    if not comm.is_root:
        return
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.argsort(ids, kind="stable")
    group.create_dataset("sample_id", data=ids[order])
    group.create_dataset("offset", data=np.concatenate([[0], np.cumsum(sizes[order])]))
    group.create_dataset("values", data=values[concatenated_ranges(starts[order], sizes[order])])


def save_messages(store, comm, path: str | Path) -> None:
    """Collective: the persistent blend messages of all ranks in one file (rank 0 writes)."""
    if not comm.is_root:
        write_messages(None, store, comm)
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        write_messages(f, store, comm)
    os.replace(tmp, path)


def load_messages(path: str | Path) -> dict[int, np.ndarray]:
    """sample id -> message vector, from a messages.h5 file."""
    with h5py.File(path, "r") as f:
        ids, offset, values = np.asarray(f["sample_id"]), np.asarray(f["offset"]), np.asarray(f["values"])
    return {int(i): values[offset[k]:offset[k + 1]] for k, i in enumerate(ids)}
