"""Checkpoints: one HDF5 file with everything a run needs to continue exactly where it stopped.

    /params/<name>                     model parameters
    /optimizer/<param index>/<key>     optimiser state tensors (momentum, Adam moments, step)
    /messages/{sample_id,offset,values}  persistent blend messages by *global* sample id
    attrs: loop (JSON: epoch, batch, step, plateau state, partial epoch totals),
           optimizer_groups (JSON), config (YAML text), format

Rank 0 writes, receiving the messages one rank's shard at a time; the file appears atomically
(temporary file, fsync, rename), so a crash while writing leaves the previous checkpoint as the
newest complete one.
On resume every rank reads the parameters and only its own samples' messages, so a run can
resume on a different number of ranks.  No pickle: tensors are datasets, the rest JSON or YAML.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .errors import InputError
from .learning.messages import concatenated_ranges
from .learning.params import read_params, write_messages, write_params

FORMAT = "dstrain-checkpoint-1"
KEEP = 2   # complete checkpoints kept in a run directory


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(path: Path, model, optimizer, loop: dict, config_yaml: str, store, comm) -> None:
    """Collective: every rank calls it (the others send their messages); rank 0 writes `path`."""
    if not comm.is_root:
        if store is not None:
            write_messages(None, store, comm)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["loop"] = json.dumps(loop)
        f.attrs["config"] = config_yaml
        write_params(f.create_group("params"), model)
        state = optimizer.state_dict()
        f.attrs["optimizer_groups"] = json.dumps(state["param_groups"])
        for index, values in state["state"].items():
            for key, value in values.items():
                f.create_dataset(f"optimizer/{index}/{key}",
                                 data=torch.as_tensor(value).detach().cpu().numpy())
        if store is not None:
            write_messages(f.create_group("messages"), store, comm)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)
    for old in sorted(path.parent.glob("step-*.h5"))[:-KEEP]:   # the newest KEEP stay
        old.unlink()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run directory (temporary files never count)."""
    for candidate in sorted(checkpoint_dir(run_dir).glob("step-*.h5"), reverse=True):
        try:
            with h5py.File(candidate, "r") as f:
                if f.attrs.get("format") == FORMAT:
                    return candidate
        except OSError:   # unreadable: skip to the previous one
            continue
    return None


def load_checkpoint(path: Path, model, optimizer, store) -> dict:
    """Restore parameters, optimiser state and this rank's messages; return the loop state."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not a readable HDF5 checkpoint (truncated or corrupt?)") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise InputError(f"{path}: not a dstrain checkpoint (attribute format != {FORMAT!r})")
        read_params(f["params"] if "params" in f else {}, model, path, "checkpoint")
        groups = json.loads(f.attrs["optimizer_groups"])
        optimizer_state = {}
        if "optimizer" in f:
            for index in f["optimizer"]:
                optimizer_state[int(index)] = {key: torch.from_numpy(np.asarray(value))
                                               for key, value in f[f"optimizer/{index}"].items()}
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
        if store is not None:
            if "messages" not in f:
                raise InputError(f"{path}: the run uses blend but the checkpoint has no messages")
            _restore_messages(f["messages"], store, path)
        return json.loads(f.attrs["loop"])


def _restore_messages(group, store, path) -> None:
    """Read only the messages of the samples this rank owns (its ids form one contiguous block)."""
    ids = np.asarray(group["sample_id"])
    offset = np.asarray(group["offset"])
    where = np.searchsorted(ids, store.sample_ids)
    if np.any(where >= len(ids)) or np.any(ids[np.minimum(where, len(ids) - 1)] != store.sample_ids):
        raise InputError(f"{path}: the checkpoint lacks messages of some samples of this run")
    low, high = int(where.min()), int(where.max()) + 1
    block = np.asarray(group["values"][offset[low]:offset[high]])
    sizes = offset[where + 1] - offset[where]
    if np.any(sizes != store.sizes):
        raise InputError(f"{path}: saved messages do not fit this model's graphs")
    store.scatter(store.sample_ids, block[concatenated_ranges(offset[where] - offset[low], sizes)])
