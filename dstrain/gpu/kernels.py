"""Where the CUDA sources are, and the one cached loader that builds their CuPy modules.

The ``.cu`` files live in the repository's ``cuda/`` folder; the package reaches them as
``dstrain/kernels`` (a link to ``../cuda`` in a checkout, copied as package data by
``pip install .``), so both a source tree and an installed package find them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

BLOCK_SIZE = 256
KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"


def kernel_source(name: str) -> Path:
    path = KERNEL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {name} not found in {KERNEL_DIR} "
                                "(a broken install? reinstall dstrain)")
    return path


class Poisoned:
    """An array module whose ``empty`` fills with NaN, so an output element that no kernel
    wrote shows up as NaN instead of passing on leftover memory (for checks, not for speed)."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def empty(self, shape, dtype=float):
        return self._xp.full(shape, np.nan, dtype=dtype)


class CudaKernels:
    """The kernels of one ``.cu`` file, compiled by CuPy (NVRTC) for one device and dtype."""

    def __init__(self, dtype=np.float32, source: str = "convex_bp.cu", device: int | None = None,
                 poison: bool = False):
        import cupy

        self.xp = Poisoned(cupy) if poison else cupy
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype {self.dtype}: the kernels are built for float32 or float64")
        self.device = cupy.cuda.Device(device).id if device is not None else cupy.cuda.Device().id
        self.module = _module(source, "float" if self.dtype == np.float32 else "double", self.device)
        self._functions = {}

    @staticmethod
    def stream():
        """Launches inside this context go to torch's current stream."""
        return on_torch_stream()

    def launch(self, name: str, count: int, args) -> None:
        """One 1-D launch of `count` threads on the current stream (see ``on_torch_stream``)."""
        count = int(count)
        if count == 0:
            return
        function = self._functions.get(name)
        if function is None:
            function = self._functions[name] = self.module.get_function(name)
        function(((count + BLOCK_SIZE - 1) // BLOCK_SIZE,), (BLOCK_SIZE,), args)


@functools.lru_cache(maxsize=None)
def _module(source: str, real: str, device: int):
    import cupy

    with cupy.cuda.Device(device):
        return cupy.RawModule(code=kernel_source(source).read_text(),
                              options=(f"-DDSTRAIN_REAL={real}",))


@functools.lru_cache(maxsize=None)
def cuda_kernels(dtype: str, device: int) -> CudaKernels:
    return CudaKernels(np.dtype(dtype), device=device)


def on_torch_stream():
    """Context in which CuPy launches go to torch's current stream (no cross-stream syncs)."""
    import cupy
    import torch

    return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)


def kernel_set(device, dtype: str, emulate: bool = False):
    """The kernels for a run on `device` (a torch.device) in `dtype` ("float32" or "float64"):
    CUDA kernels on a GPU; on the CPU None (the CPU engine), or with `emulate` (the config's
    debug.emulate_kernels) the same kernels emulated: how the tests run the whole GPU path
    without a GPU."""
    if device.type == "cuda":
        return cuda_kernels(dtype, device.index if device.index is not None else 0)
    if emulate:
        from .emulator import EmulatedKernels
        return EmulatedKernels(np.dtype(dtype))
    return None
