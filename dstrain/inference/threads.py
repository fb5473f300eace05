"""Threads for the CPU engine: how many it may use, and one pool that runs a task per range of
samples.  numpy releases the GIL inside its loops, so ranges of a batch run on several cores."""
from __future__ import annotations

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
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _POOL, _POOL_SIZE, _LOCK
    _POOL, _POOL_SIZE, _LOCK = None, 0, threading.Lock()


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
    """Call every task (no arguments): the last in this thread, the others in the pool.  Returns
    their results in order; every task has finished when it returns or raises (the first
    exception, in task order, is raised)."""
    if len(tasks) == 1:
        return [tasks[0]()]
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
