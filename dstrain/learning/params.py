"""Model parameters as HDF5: one dataset per parameter name, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch


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
