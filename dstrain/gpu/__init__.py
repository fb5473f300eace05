"""The GPU backend: CUDA kernels for convex BP (cuda/*.cu), their loaders, and device choice.

Nothing here imports CuPy at import time: dstrain works without it, on the CPU path.
"""
from .engine import DeviceBP, DeviceResult
from .kernels import CudaKernels, cuda_kernels, kernel_set, kernel_source, on_torch_stream

__all__ = ["DeviceBP", "DeviceResult", "CudaKernels", "cuda_kernels", "kernel_set", "kernel_source",
           "on_torch_stream"]
