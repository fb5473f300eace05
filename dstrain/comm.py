"""All communication between processes: the only module that imports mpi4py.

    comm = init()               # MPI when launched with several processes, else a single process
    comm.rank, comm.world_size, comm.local_rank, comm.is_root
    comm.allreduce_(array)      # in-place sum over ranks (numpy buffers: capitalised MPI calls)
    comm.broadcast_(array)      # rank 0's values everywhere
    reducer = GradientReducer(model.parameters(), comm)     # CPU or CUDA parameters
    reducer.reduce(local_count) # bucketed Allreduce of the gradients, divided by the global count

The single-process communicator has the same interface, so debug mode needs no MPI installed.
mpi4py is imported only when the environment says a launcher started several processes (or
when asked for), so a plain `python` never initialises MPI.
"""
from __future__ import annotations

import os
import sys
import typing

import numpy as np
import torch

from .config import Communicator

# launcher -> (rank, local rank, world size) environment variables, checked in this order
LAUNCHER_ENV = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("MPICH/Hydra", "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE"),
    ("Slurm", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
)
DEFAULT_BUCKET_BYTES = 25 * 2**20   # DDP's default bucket size
NUM_FLAGS = 2                       # per-step flags reduced with the gradients


def launcher_environment(environ=os.environ) -> tuple[str, int, int, int] | None:
    """(launcher, rank, local rank, world size) from the environment, or None if not launched.

    Slurm counts only inside an `srun` step (SLURM_STEP_ID set): the batch script itself also
    sees SLURM_NTASKS, but it is one process.
    """
    for name, rank, local_rank, size in LAUNCHER_ENV:
        if size in environ and (name != "Slurm" or "SLURM_STEP_ID" in environ):
            return name, int(environ.get(rank, 0)), int(environ.get(local_rank, 0)), int(environ[size])
    return None


class SingleProcess:
    """The communicator of a run without MPI: every collective is the identity."""

    rank, world_size, local_rank = 0, 1, 0
    library = "none (single process)"
    uses_mpi = False            # collectives never touch the buffers: any kind of memory will do

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        return array

    def broadcast_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        return array

    def gather_rows(self, array: np.ndarray) -> np.ndarray | None:
        """Concatenate every rank's 1-D array on rank 0 (None elsewhere)."""
        return array

    def send_(self, array: np.ndarray, dest: int) -> None:
        raise RuntimeError(f"a single process has no rank {dest} to send to")

    def recv_(self, array: np.ndarray, source: int) -> np.ndarray:
        raise RuntimeError(f"a single process has no rank {source} to receive from")

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        sys.exit(code)


class MPIComm(SingleProcess):
    """MPI.COMM_WORLD behind the SingleProcess interface.

    Buffers are numpy arrays, or anything mpi4py reads through DLPack / __cuda_array_interface__
    (torch tensors); device memory only for a CUDA-aware MPI (see dstrain.gpu.device).
    """

    uses_mpi = True

    def __init__(self):
        from mpi4py import MPI
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        # ranks on this node, whatever the launcher: a shared-memory split
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.library = MPI.Get_library_version().splitlines()[0].strip()

    def allreduce_(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        ops = {"sum": self._mpi.SUM, "max": self._mpi.MAX, "min": self._mpi.MIN}
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=ops[op])
        return array

    def broadcast_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        self.comm.Bcast(array, root=root)
        return array

    def gather_rows(self, array: np.ndarray) -> np.ndarray | None:
        array = np.ascontiguousarray(array)
        counts = np.zeros(self.world_size, dtype=np.int64)
        counts[self.rank] = len(array)
        self.allreduce_(counts)
        out = np.empty(int(counts.sum()), dtype=array.dtype) if self.is_root else None
        self.comm.Gatherv(array, [out, counts] if self.is_root else None, root=0)
        return out

    def send_(self, array: np.ndarray, dest: int) -> None:
        self.comm.Send(np.ascontiguousarray(array), dest=dest)

    def recv_(self, array: np.ndarray, source: int) -> np.ndarray:
        self.comm.Recv(array, source=source)
        return array

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        # ends every rank, as `python -m mpi4py` does on an uncaught exception: never a hang
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def mpi4py_version() -> str | None:
    """mpi4py's version if it is installed (without initialising MPI), else None."""
    try:
        import mpi4py
    except ImportError:
        return None
    return mpi4py.__version__


def mpi_cuda_query() -> tuple[str | None, bool | None]:
    """(MPI_Get_library_version's first line, MPIX_Query_cuda_support's answer) of the MPI this
    process has already initialised; (None, None) if it has not, so asking never starts MPI.
    The answer is None where mpi4py does not wrap the query (mpi4py 4.1 does not)."""
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return None, None
    version = MPI.Get_library_version().splitlines()[0].strip()
    query = getattr(MPI, "Query_cuda_support", None) or getattr(MPI, "MPIX_Query_cuda_support", None)
    try:
        return version, (bool(query()) if query is not None else None)
    except Exception:   # an extension that exists but fails is no answer
        return version, None


def init(kind: str = "auto") -> SingleProcess:
    """`auto`: MPI if a launcher started more than one process; `mpi`: always; `none`: never."""
    kinds = typing.get_args(Communicator)
    if kind not in kinds:
        raise ValueError(f"communicator {kind!r}: expected one of {', '.join(kinds)}")
    launched = launcher_environment()
    if kind == "mpi" or (kind == "auto" and launched is not None and launched[3] > 1):
        try:
            comm = MPIComm()
        except ImportError:
            raise RuntimeError(f"{launched[0] if launched else 'a launcher'} started several "
                               "processes but mpi4py is not installed: pip install 'dstrain[mpi]'") from None
        if launched is not None and launched[3] > 1 and comm.world_size == 1:
            # the known Open MPI 5 + `srun --mpi=pmi2` (or a PMI mismatch) pitfall: N processes,
            # each believing it is alone, would all train and all write as rank 0
            raise RuntimeError(
                f"{launched[0]} started {launched[3]} processes but MPI sees each as a singleton "
                f"(rank {launched[1]} here): the MPI library and the launcher's PMI do not match. "
                "Use `srun --mpi=pmix` with a PMIx-enabled Slurm, or mpirun inside the allocation "
                "(launch/slurm/train.sbatch: DSTRAIN_LAUNCHER=mpirun)")
        return comm
    return SingleProcess()


class GradientReducer:
    """Sum the parameters' gradients over ranks in a few large buckets, then divide by the
    global number of samples of the step (reduced in the same call, so uneven batches are exact).

    Each bucket is one contiguous tensor on its parameters' device, and the parameters' ``.grad``
    tensors are views into it (as DDP's gradient_as_bucket_view), so backward writes straight into
    what is reduced.  Zero the gradients with ``zero_grad()`` here (or the optimiser's
    ``zero_grad(set_to_none=False)``) to keep the views; a gradient that was replaced anyway is
    copied in and the view restored.

    How a bucket reaches MPI (its route):

    - ``host``: a CPU bucket, handed to MPI as a numpy view: no copies.
    - ``stage``: a CUDA bucket, the default.  It is copied into a pinned host buffer (allocated
      once), the stream synchronised (MPI must not read before the copy is complete), summed and
      divided on the host, and copied back asynchronously (ordered before later work on the
      stream).  Works with any MPI.
    - ``device``: a CUDA bucket with ``device_buffers=True`` (a CUDA-aware MPI), or whenever the
      communicator does not use MPI: the stream is synchronised and the tensor itself handed over.
      Only for an MPI that says it supports CUDA: Debian's Open MPI 4.1.6 segfaults on device memory.

    ``_route`` forces one route for every bucket, so tests run the CUDA routes on CPU tensors.
    """

    ROUTES = ("host", "stage", "device")

    def __init__(self, parameters, comm: SingleProcess, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 device_buffers: bool = False, _route: str | None = None):
        if _route is not None and _route not in self.ROUTES:
            raise ValueError(f"route {_route!r}: expected one of {', '.join(self.ROUTES)}")
        self.comm = comm
        self.parameters = [p for p in parameters if p.requires_grad]
        self.buckets: list[list[torch.nn.Parameter]] = []
        size, current = 0, []
        for p in self.parameters:
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > bucket_bytes or p.dtype != current[0].dtype
                            or p.device != current[0].device):
                self.buckets.append(current)
                size, current = 0, []
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(current)
        # without MPI nothing reads the buckets, so device memory needs no staging
        direct = device_buffers or not getattr(comm, "uses_mpi", True)
        self.tensors: list[torch.Tensor] = []
        self.routes: list[str] = []
        self.staging: list[tuple[torch.Tensor, np.ndarray] | None] = []
        for k, bucket in enumerate(self.buckets):
            # extra slots at the end of the last bucket carry the sample count and the step's flags
            length = sum(p.numel() for p in bucket) + (1 + NUM_FLAGS) * (k == len(self.buckets) - 1)
            tensor = torch.zeros(length, dtype=bucket[0].dtype, device=bucket[0].device)
            route = _route or ("host" if not tensor.is_cuda else "device" if direct else "stage")
            if route == "host" and tensor.is_cuda:
                raise ValueError("route 'host' needs CPU parameters")
            host = torch.empty(length, dtype=tensor.dtype, pin_memory=tensor.is_cuda) if route == "stage" else None
            self.tensors.append(tensor)
            self.routes.append(route)
            self.staging.append((host, host.numpy()) if host is not None else None)
        # what the bucket is, as the rest of the code sees it: numpy on the host, else the tensor
        self.buffers = [t.numpy() if not t.is_cuda else t for t in self.tensors]
        self._synchronise = sorted({t.device for t, r in zip(self.tensors, self.routes)
                                    if t.is_cuda and r != "host"}, key=str)
        self.views = {}
        for bucket, tensor in zip(self.buckets, self.tensors):
            position = 0
            for p in bucket:
                self.views[p] = tensor[position:position + p.numel()].view(p.shape)
                position += p.numel()
        self._attach()

    def _attach(self) -> None:
        for p, view in self.views.items():
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view

    def _outgoing(self, k: int):
        """What MPI reads for bucket k (its staging copy is queued here, not yet complete)."""
        if self.routes[k] == "host":
            return self.buffers[k]
        if self.routes[k] == "device":
            return self.tensors[k]
        host, view = self.staging[k]
        host.copy_(self.tensors[k], non_blocking=True)
        return view

    def reduce(self, local_count: int, flags=(0,) * 2) -> tuple[int, np.ndarray]:
        """Reduce gradients in place; return the step's global sample count and the flags summed
        over ranks (e.g. "a stop signal arrived", "a non-finite value appeared"): every rank
        learns them in the same Allreduce, so all decide alike."""
        self._attach()
        if self.routes[-1] == "host":
            tail = self.buffers[-1][-(1 + NUM_FLAGS):]
            tail[0], tail[1:] = local_count, flags
        else:   # written on the device, before the staging copy that takes it along
            values = [float(local_count), *(float(flag) for flag in flags)]
            self.tensors[-1][-(1 + NUM_FLAGS):].copy_(torch.tensor(values, dtype=self.tensors[-1].dtype))
        outgoing = [self._outgoing(k) for k in range(len(self.tensors))]
        for device in self._synchronise:
            torch.cuda.current_stream(device).synchronize()
        for buffer in outgoing:
            self.comm.allreduce_(buffer)
        tail = outgoing[-1][-(1 + NUM_FLAGS):]
        if isinstance(tail, torch.Tensor):
            tail = tail.cpu().numpy()
        global_count = int(round(float(tail[0])))
        summed = tail[1:].astype(np.float64)
        for k, buffer in enumerate(outgoing):
            buffer *= 1.0 / max(global_count, 1)
            if self.staging[k] is not None:
                self.tensors[k].copy_(self.staging[k][0], non_blocking=True)
        return global_count, summed

    def zero_grad(self) -> None:
        """Zero every parameter's gradient: one fill per bucket (the gradients are its views)."""
        self._attach()
        for tensor in self.tensors:
            tensor.zero_()

    def gradients_finite(self) -> bool:
        """Whether this rank's gradients are all finite (checked before they are summed)."""
        last = self.buffers[-1]
        for b in self.buffers:
            values = b[:-(1 + NUM_FLAGS)] if b is last else b
            if not (bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor)
                    else bool(np.isfinite(values).all())):
                return False
        return True

    def broadcast_parameters(self) -> None:
        """Rank 0's parameters on every rank (at start: identical models everywhere)."""
        for p in self.parameters:
            with torch.no_grad():
                values = p.detach().reshape(-1).cpu().numpy().copy()
                self.comm.broadcast_(values)
                p.copy_(torch.from_numpy(values).reshape(p.shape))

    def parameters_identical(self) -> bool:
        """Whether every rank holds bit-identical parameters (the debug check)."""
        flat = np.concatenate([p.detach().reshape(-1).double().cpu().numpy() for p in self.parameters])
        high, low = flat.copy(), flat.copy()
        self.comm.allreduce_(high, op="max")
        self.comm.allreduce_(low, op="min")
        return bool(np.array_equal(high, low))
