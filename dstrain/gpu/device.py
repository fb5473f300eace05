"""One GPU per rank, and whether the MPI in use may be handed GPU memory.

    device = resolve_device(config.run.device, comm.local_rank)     # cpu, or cuda:(local rank % GPUs)
    supported, finding = cuda_aware_mpi(comm.library)               # True / False / None (unknown)
    reducer = GradientReducer(model.parameters(), comm,
                              device_buffers=use_device_buffers(config.run.cuda_aware_mpi, supported))

CuPy is optional: without it (or without a driver) everything here answers "no GPU" and never
raises, so importing dstrain needs neither.  A CUDA-aware MPI is never assumed: Debian's Open MPI
4.1.6 segfaults when handed a device buffer, so unknown counts as no.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import torch

from ..config import CudaAwareMpi, Device
from ..errors import InputError

DEVICES = typing.get_args(Device)                    # run.device's choices
CUDA_AWARE_SETTINGS = typing.get_args(CudaAwareMpi)  # run.cuda_aware_mpi's
OMPI_INFO_TIMEOUT_S = 20

_cupy_error: str | None = None     # why cupy_module() returned None


@functools.lru_cache(maxsize=None)
def cupy_module():
    """The `cupy` module, or None when it is not installed or cannot load its CUDA libraries."""
    global _cupy_error
    try:
        import cupy
    except ModuleNotFoundError as error:
        _cupy_error = ("CuPy is not installed (pip install 'dstrain[gpu]')" if error.name == "cupy"
                       else f"CuPy cannot be imported ({error})")
        return None
    except Exception as error:   # a broken CUDA install shows up at import as many error types
        _cupy_error = f"CuPy cannot be imported ({type(error).__name__}: {_one_line(error)})"
        return None
    return cupy


def gpu_count() -> int:
    """CUDA devices visible to CuPy (after CUDA_VISIBLE_DEVICES); 0 without CuPy or a driver."""
    cupy = cupy_module()
    if cupy is None:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:            # CUDARuntimeError without a driver, and its relatives
        return 0


def _cuda_missing() -> str | None:
    """What stops this process from training on a GPU, in a few words, or None."""
    if cupy_module() is None:
        return _cupy_error or "CuPy is not installed (pip install 'dstrain[gpu]')"
    if gpu_count() == 0:
        return "no GPU is visible (CuPy sees no CUDA device; check the driver and CUDA_VISIBLE_DEVICES)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA support (a CPU build?)"
    return None


class DeviceUnavailable(InputError):
    """The config asks for a GPU this process cannot have (bad input for this machine: the CLI
    says so in one line, exit code 2)."""


def resolve_device(kind: str, local_rank: int) -> torch.device:
    """The torch device of this rank for ``run.device`` (auto | cpu | cuda).

    Ranks on a node take the node's GPUs round robin by local rank (several may share one).
    Choosing a GPU also makes it the current device of torch and CuPy, so that later
    allocations and kernels of either land on it.
    """
    if kind not in DEVICES:
        raise ValueError(f"run.device must be one of {', '.join(DEVICES)}, got {kind!r}")
    if kind == "cpu":
        return torch.device("cpu")
    missing = _cuda_missing()
    if missing is not None:
        if kind == "cuda":
            raise DeviceUnavailable(f"run.device = cuda but {missing}")
        return torch.device("cpu")
    index = local_rank % gpu_count()
    torch.cuda.set_device(index)
    cupy_module().cuda.Device(index).use()
    return torch.device("cuda", index)


# ---------------------------------------------------------------- CUDA-aware MPI

_OMPI_CUDA = re.compile(r"^mca:[^:\n]*:base:param:(?:mpi|opal)_built_with_cuda_support:value:(\w+)\s*$",
                        re.MULTILINE)
_OMPI_VERSION = re.compile(r"^ompi:version:full:(\S+)\s*$", re.MULTILINE)


def parse_ompi_info(text: str) -> bool | None:
    """Whether `ompi_info --parsable --all` says Open MPI was built with CUDA support (None: it
    does not say).  Open MPI 4 and 5 print ``mca:opal:base:param:opal_built_with_cuda_support:
    value:false``; older ones the ``mpi_built_with_cuda_support`` synonym."""
    match = _OMPI_CUDA.search(text)
    if match is None:
        return None
    return {"true": True, "1": True, "false": False, "0": False}.get(match.group(1).lower())


def _open_mpi_version(library_version: str | None) -> str | None:
    match = re.search(r"Open MPI v(\d[\w.]*)", library_version or "")
    return match.group(1) if match else None


def _ask_ompi_info(library_version: str | None) -> tuple[bool | None, str]:
    # the ompi_info beside the interpreter first: a venv's pip Open MPI, not the system's
    program = (shutil.which("ompi_info", path=str(Path(sys.executable).parent))
               or shutil.which("ompi_info"))
    if program is None:
        return None, "unknown: no ompi_info found"
    try:
        done = subprocess.run([program, "--parsable", "--all"], capture_output=True, text=True,
                              timeout=OMPI_INFO_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"unknown: {program} failed ({type(error).__name__})"
    found = _OMPI_VERSION.search(done.stdout)
    in_use = _open_mpi_version(library_version)
    if found and in_use and found.group(1) != in_use:
        return None, f"unknown: {program} is Open MPI {found.group(1)}, but {in_use} is in use"
    answer = parse_ompi_info(done.stdout)
    if answer is None:
        return None, f"unknown: {program} does not say whether it was built with CUDA"
    return answer, f"{'yes' if answer else 'no'}: {program} says built_with_cuda_support = {str(answer).lower()}"


def cuda_aware_mpi(library_version: str | None = None) -> tuple[bool | None, str]:
    """(True, False or None for unknown, a one-line finding) for the MPI library in use.

    ``library_version`` is MPI_Get_library_version's text (``comm.library``); None: the MPI this
    process has initialised, if any.  Asks, in order, the library itself (MPIX_Query_cuda_support,
    where mpi4py wraps it), Open MPI's ompi_info; anything else is unknown.  Never starts MPI.
    """
    from ..comm import mpi_cuda_query

    loaded_version, answer = mpi_cuda_query()
    library_version = library_version or loaded_version
    if library_version is not None and library_version.startswith("none"):
        return None, "no MPI in use (single process)"
    if answer is not None:
        return answer, f"{'yes' if answer else 'no'}: MPIX_Query_cuda_support() = {int(answer)}"
    if library_version is None or "Open MPI" in library_version:
        return _ask_ompi_info(library_version)
    if "MPICH" in library_version or "MVAPICH" in library_version:
        # MPICH decides at run time (MPIR_CVAR_ENABLE_GPU and its build): no reliable static answer
        return None, "unknown: MPICH does not say; set run.cuda_aware_mpi = yes if it was built with CUDA"
    return None, f"unknown: {library_version.split(',')[0]} has no known way to ask"


def use_device_buffers(setting: str, finding: bool | None) -> bool:
    """Whether to hand device buffers to MPI: ``run.cuda_aware_mpi`` (auto | yes | no) and the
    first element of :func:`cuda_aware_mpi`'s answer.  auto trusts only a definite yes."""
    if setting not in CUDA_AWARE_SETTINGS:
        raise ValueError(f"run.cuda_aware_mpi must be one of {', '.join(CUDA_AWARE_SETTINGS)}, got {setting!r}")
    return setting == "yes" or (setting == "auto" and finding is True)


# ---------------------------------------------------------------- dstrain info

def _one_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def describe(library_version: str | None = None) -> list[str]:
    """Lines for `dstrain info`: CuPy and CUDA versions, each GPU, torch's CUDA, CUDA-aware MPI."""
    lines = []
    cupy = cupy_module()
    if cupy is None:
        lines.append(f"  GPU      no GPU visible: {_cupy_error}")
    else:
        runtime = cupy.cuda.runtime
        try:
            versions = (f"CUDA runtime {_cuda_version(runtime.runtimeGetVersion())}, "
                        f"driver {_cuda_version(runtime.driverGetVersion())}")
        except Exception as error:
            versions = f"CUDA unusable: {_one_line(error)}"
        lines.append(f"  CuPy     {cupy.__version__} ({versions})")
        count = gpu_count()
        if count == 0:
            lines.append("  GPU      no GPU visible: CuPy sees no CUDA device")
        for index in range(count):
            try:
                properties = runtime.getDeviceProperties(index)
                name = properties["name"]
                name = name.decode() if isinstance(name, bytes) else name
                lines.append(f"  GPU {index:<4d} {name}, {properties['totalGlobalMem'] / 2**30:.1f} GiB")
            except Exception as error:
                lines.append(f"  GPU {index:<4d} cannot be queried: {_one_line(error)}")
    cuda = torch.version.cuda
    lines.append(f"  CUDA     torch built for CUDA {cuda}, {'a GPU' if torch.cuda.is_available() else 'no GPU'} "
                 "available" if cuda else "  CUDA     torch is a CPU build")
    lines.append(f"  CUDA-aware MPI  {cuda_aware_mpi(library_version)[1]}")
    return lines
