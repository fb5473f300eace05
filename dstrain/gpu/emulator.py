"""The CUDA kernels of ``cuda/*.cu`` run on the CPU: g++ compiles the same source with host
stand-ins for the CUDA built-ins (``cuda/host/``), and every thread of a launch runs in turn.

This is how the kernels are tested on machines without a GPU (CI): ``EmulatedKernels`` offers
the interface of ``CudaKernels`` with numpy arrays, so ``DeviceBP`` runs unchanged on it.
``reverse=True`` runs the threads last to first: a kernel whose threads race gives different
results in the two orders.  Needs a C++17 compiler (``$CXX``, default g++).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os

import numpy as np

from ..native import BuildError, shared_library
from .kernels import BLOCK_SIZE, Poisoned, kernel_source

_HOST = kernel_source("host/cuda_host.h").parent


@functools.lru_cache(maxsize=None)
def _library(source_name: str, real: str) -> ctypes.CDLL:
    source = kernel_source(source_name)
    launcher = _HOST / "launch.cpp"
    compiler = os.environ.get("CXX", "g++")
    command = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC",
               "-include", str(_HOST / "cuda_host.h"), f"-DDSTRAIN_REAL={real}",
               f'-DKERNEL_SOURCE="{source}"', str(launcher), "-o", "{out}"]
    try:
        library = shared_library("emulator", f"{source.stem}-{real}",
                                 [source, launcher, _HOST / "cuda_host.h"], command)
    except BuildError as error:
        raise RuntimeError(f"compiling {source} for the CPU emulator failed: {error}") from None
    library.emulate_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    return library


class EmulatedKernels:
    """The kernel-set interface of ``DeviceBP`` (xp, dtype, launch) on numpy arrays.

    ``poison=True``: buffers the engine allocates start as NaN, so a result element that no
    kernel wrote is caught (a NaN in the output) instead of passing on leftover memory.
    """

    def __init__(self, dtype=np.float32, source: str = "convex_bp.cu", reverse: bool = False,
                 poison: bool = True):
        self.xp = Poisoned(np) if poison else np
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype {self.dtype}: the kernels are built for float32 or float64")
        self.reverse = reverse
        self._library = _library(source, "float" if self.dtype == np.float32 else "double")
        self._scalar = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.float32): ctypes.c_float,
                        np.dtype(np.float64): ctypes.c_double}

    @staticmethod
    def stream():
        return contextlib.nullcontext()

    def launch(self, name: str, count: int, args) -> None:
        count = int(count)
        if count == 0:
            return
        keep, params = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                if a.dtype not in (np.int32, self.dtype) or not a.flags.c_contiguous:
                    raise TypeError(f"{name}: array argument of dtype {a.dtype} "
                                    f"(expected contiguous int32 or {self.dtype})")
                value = ctypes.c_void_p(a.ctypes.data)
            elif isinstance(a, np.generic) and a.dtype in self._scalar:
                value = self._scalar[a.dtype](a.item())
            else:
                raise TypeError(f"{name}: argument {a!r} is not an array or a typed numpy scalar")
            keep.append(value)
            params.append(ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
        grid = (count + BLOCK_SIZE - 1) // BLOCK_SIZE
        array = (ctypes.c_void_p * len(params))(*params)
        if self._library.emulate_launch(name.encode(), grid, BLOCK_SIZE, array, int(self.reverse)):
            raise KeyError(f"no kernel named {name!r}")
