"""Threads for the CPU engine: how many it may use, and one pool that runs a task per range of
samples.  numpy releases the GIL inside its loops, so ranges of a batch run on several cores.

While a call runs its tasks, the calling thread is held on one core (the one it ran on at its first
call, so that the ranges keep their caches from call to call) and the pool's threads on the
caller's other cores (``os.sched_getaffinity``).  Left to the scheduler, a pool thread woken after
an idle spell was often put on the caller's core, and both then shared it for several ms
(2nd-order words on a 2-core VM, a sweep after a 0.3 s pause: each range's CPU time half its wall
time).  The core comes from where the caller runs, not from the start of the allowed set (as
OMP_PROC_BIND's would), so processes that share cores (ranks bound to a socket, say) do not all
crowd onto the first ones.  The caller's affinity is restored when the call returns;
``DSTRAIN_PIN_THREADS=0`` turns this off.

The engine's ranges are its parallelism, so numpy's BLAS runs on one thread inside it
(``blas_on_one_thread``): OpenBLAS's workers busy-wait after a threaded call, on the cores the
ranges run on (1000 words with shared tables, 10 sweeps: 76.3 ms with OpenBLAS on 2 threads
against 36.7 on one at 2 engine threads, 86.7 against 67.5 at 1; measured on a 2-core VM)."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()


def engine_threads(threads: int | None = None) -> int:
    """`threads` if given, else torch's intra-op thread count (what the trainer sets from
    `run.threads`), at least 1."""
    if threads is None:
        try:
            import torch
            threads = torch.get_num_threads()
        except ImportError:   # torch is a dependency; stay usable without it all the same
            threads = 1
    return max(1, int(threads))


def _forget_pool():
    """In a forked child the pool's threads do not exist: start a new pool when needed (and the
    BLAS blocks of the parent's other threads never end there: restore its thread count); its
    calls take a core of their own, not the parent's."""
    global _POOL, _POOL_SIZE, _LOCK, _BLAS_LOCK, _BLAS_USERS, _HOME
    _POOL, _POOL_SIZE, _LOCK = None, 0, threading.Lock()
    _HOME = threading.local()
    if _BLAS_USERS:
        for (_, put), count in zip(_openblas(), _BLAS_SAVED):
            put(count)
    _BLAS_LOCK, _BLAS_USERS = threading.Lock(), 0


os.register_at_fork(after_in_child=_forget_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dstrain-bp")
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def run_parallel(tasks: list) -> list:
    """Call every task (no arguments): the last in this thread, the others in the pool, with
    numpy's BLAS on one thread.  Returns their results in order; every task has finished when
    it returns or raises (the first exception, in task order, is raised)."""
    with blas_on_one_thread():
        return _run_parallel(tasks)


_PINNED = threading.local()   # the cores a pool thread is held on
_HOME = threading.local()     # the core a calling thread is held on during its calls


@functools.cache
def _libc():
    return ctypes.CDLL(None)


def _current_core() -> int | None:
    """The core the calling thread runs on (glibc's sched_getcpu), None where unknown."""
    try:
        core = _libc().sched_getcpu()
    except (AttributeError, OSError):
        return None
    return core if core >= 0 else None


def _on_cores(cores: frozenset, task):
    """task() on a pool thread held on `cores` (set when they change, not on every call)."""
    if getattr(_PINNED, "cores", None) != cores:
        os.sched_setaffinity(0, cores)
        _PINNED.cores = cores
    return task()


def _run_parallel(tasks: list) -> list:
    if len(tasks) == 1:
        return [tasks[0]()]
    if not hasattr(os, "sched_setaffinity"):
        return _run_tasks(tasks)
    saved = os.sched_getaffinity(0)
    here = None
    if os.environ.get("DSTRAIN_PIN_THREADS", "1") != "0":   # (a caller's core: the first it ran
        here = getattr(_HOME, "core", None)                  # on, while its affinity allows it)
        if here not in saved:
            here = _HOME.core = _current_core()
    held = here is not None and here in saved and len(saved) > 1
    # the pool's threads: on the caller's other cores, else on all of the caller's
    others = frozenset(saved - {here}) if held else frozenset(saved)
    workers = [functools.partial(_on_cores, others, task) for task in tasks[:-1]]
    if not held:
        return _run_tasks(workers + tasks[-1:])
    os.sched_setaffinity(0, {here})   # (this thread runs the last task)
    try:
        return _run_tasks(workers + tasks[-1:])
    finally:
        os.sched_setaffinity(0, saved)


def _run_tasks(tasks: list) -> list:
    futures = [_pool(len(tasks) - 1).submit(task) for task in tasks[:-1]]

    def outcome(call):
        try:
            return True, call()
        except BaseException as e:   # still wait for the others: they write into shared arrays
            return False, e
    last = outcome(tasks[-1])
    outcomes = [outcome(future.result) for future in futures] + [last]
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]


# (getter, setter) names of OpenBLAS builds' thread count: numpy's wheels, then plain builds
_OPENBLAS_SYMBOLS = [(f"{prefix}get_num_threads{suffix}", f"{prefix}set_num_threads{suffix}")
                     for prefix in ("scipy_openblas_", "openblas_") for suffix in ("64_", "")]


@functools.cache
def _openblas() -> tuple:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (found in
    /proc/self/maps once numpy is imported; none elsewhere, where this module changes nothing)."""
    importlib.import_module("numpy")   # (loads numpy's OpenBLAS)
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()
                            and line.split()[-1].startswith("/")})
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in _OPENBLAS_SYMBOLS:
            if hasattr(library, get) and hasattr(library, put):
                found.append((getattr(library, get), getattr(library, put)))
                break
    return tuple(found)


def blas_threads() -> list[int]:
    """The thread count of each OpenBLAS loaded (empty if none is found)."""
    return [get() for get, _ in _openblas()]


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_SAVED: list[int] = []


@contextlib.contextmanager
def blas_on_one_thread():
    """numpy's BLAS on one thread while the block runs (blocks in several threads at once: from
    the first entry to the last exit), its thread count restored afterwards."""
    global _BLAS_USERS, _BLAS_SAVED
    libraries = _openblas()
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_SAVED = [get() for get, _ in libraries]
            for (_, put), count in zip(libraries, _BLAS_SAVED):
                if count != 1:
                    put(1)
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                for (_, put), count in zip(libraries, _BLAS_SAVED):
                    if count != 1:
                        put(count)
