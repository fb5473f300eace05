"""Persistent per-sample messages for `blend` (the paper's algorithm 4): warm starts across steps.

Each sample keeps its message vector, keyed by its global sample id, for the whole run; a step
gathers the vectors of its samples into the batch layout (sample-major, as ``GraphBatch`` lays
them out) and scatters the updated ones back.  Under MPI each rank holds the store of its shard.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def concatenated_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated ranges [start, start + size) as one index array, without a Python loop."""
    total = int(sizes.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return shift + np.arange(total)


class MessageStore:
    """Message vectors of a fixed set of samples (zeros until first written)."""

    def __init__(self, sample_ids, sizes, xp=np, dtype=np.float64):
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if self.sample_ids.shape != self.sizes.shape:
            raise ValueError("MessageStore: one size per sample id is needed")
        order = np.argsort(self.sample_ids)
        self._sorted_ids, self._sorted_pos = self.sample_ids[order], order
        if len(self._sorted_ids) > 1 and np.any(np.diff(self._sorted_ids) == 0):
            raise ValueError("MessageStore: duplicate sample ids")
        self.offset = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.xp = xp
        self.values = xp.zeros(int(self.offset[-1]), dtype=dtype)
        # equal sizes (words of one length: every sample) make the store a matrix, one row per
        # sample: a step takes whole rows instead of forming an index of every entry
        self._rows = self.values.reshape(len(self.sizes), -1) \
            if len(self.sizes) and np.all(self.sizes == self.sizes[0]) else None
        self._last = (None, None)   # a step gathers and then scatters the same ids: index once

    def _index(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        key = ids.tobytes()
        if self._last[0] == key:
            return self._last[1]
        where = np.searchsorted(self._sorted_ids, ids)
        where = np.minimum(where, len(self._sorted_ids) - 1)
        if len(ids) and np.any(self._sorted_ids[where] != ids):
            missing = ids[self._sorted_ids[where] != ids][:5].tolist()
            raise KeyError(f"MessageStore: sample ids {missing} are not held here")
        pos = self._sorted_pos[where]
        index = pos if self._rows is not None else concatenated_ranges(self.offset[pos],
                                                                       self.sizes[pos])
        index = index if self.xp is np else self.xp.asarray(index)   # on the device: one copy up
        self._last = (key, index)
        return index

    def gather(self, ids) -> np.ndarray:
        """The messages of samples `ids`, concatenated in that order."""
        if self._rows is not None:
            return self._rows[self._index(ids)].reshape(-1)
        return self.values[self._index(ids)]

    def scatter(self, ids, messages) -> None:
        messages = self.xp.asarray(messages, dtype=self.values.dtype)
        if self._rows is not None:
            self._rows[self._index(ids)] = messages.reshape(-1, self._rows.shape[1])
        else:
            self.values[self._index(ids)] = messages

    def of(self, sample_id: int) -> np.ndarray:
        return to_host(self.gather([sample_id]))

    def host_values(self) -> np.ndarray:
        """All values as a float64 numpy array (a copy from the device on a GPU)."""
        return to_host(self.values).astype(np.float64, copy=False)


def to_host(array) -> np.ndarray:
    """A numpy array from a numpy or CuPy one."""
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)


# ------------------------------------------------------------------ memory of the messages
# blend keeps every owned sample's messages for the whole run; a shard too large for its rank
# would be killed by the kernel mid-epoch (the zeros are only committed as they are written), so
# the bytes are checked against run.message_memory before training starts.

AUTO_FRACTION = 0.5   # of the memory available at start: the rest holds data, nets, checkpoints


class MessageMemoryError(InputError):
    """blend's messages of a rank's shard need more than run.message_memory allows."""


def show_bytes(count: float) -> str:
    """A byte count for people: '317.4 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None   # cgroup v2 writes 'max' for no limit


def _cgroup_room(proc: Path, cgroups: Path) -> int | None:
    """The least room (limit - usage) of this process's memory cgroups, from its own up to the
    root (Slurm and containers limit a job there, below what the node has); None: no limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":   # cgroup v2
            base, limit_file, usage_file = cgroups, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):   # cgroup v1
            base, limit_file, usage_file = cgroups / "memory", "memory.limit_in_bytes", \
                "memory.usage_in_bytes"
        else:
            continue
        level = base / where.strip("/")
        while True:
            limit, usage = _read_int(level / limit_file), _read_int(level / usage_file)
            if limit is not None and usage is not None and limit < 2**62:   # v1: huge = none
                rooms.append(max(limit - usage, 0))
            if level == base:
                break
            level = level.parent
    return min(rooms) if rooms else None


def available_memory(proc="/proc", cgroups="/sys/fs/cgroup") -> int | None:
    """Bytes this process can still allocate without swapping: the kernel's MemAvailable, or
    less where its cgroup's limit leaves less; None where neither can be read."""
    proc, cgroups = Path(proc), Path(cgroups)
    available = None
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room(proc, cgroups)
    return room if available is None else available if room is None else min(available, room)


def message_memory_limit(setting, comm, device=None) -> tuple[float, str]:
    """This rank's limit in bytes (inf: none) for run.message_memory and how it was set (for
    messages).  ``auto``: half the memory available at start -- of the rank's GPU when the
    messages live there, else of the node, shared by the node's ranks.  Collective."""
    from ..config import byte_count   # here: config imports nothing of learning

    local_ranks = int(comm.allreduce_(np.array([comm.local_rank], np.int64), "max")[0]) + 1
    if setting == "unlimited":
        return float("inf"), "run.message_memory = unlimited"
    if setting != "auto":
        return float(byte_count(setting)), f"run.message_memory = {setting}"
    if device is not None and device.type == "cuda":   # the messages live in the GPU's memory
        import torch
        free = int(torch.cuda.mem_get_info(device)[0])
        return AUTO_FRACTION * free, "run.message_memory = auto: half of the GPU's free memory"
    available = available_memory()
    if available is None:   # nothing to measure (not Linux): no limit rather than a guess
        return float("inf"), "run.message_memory = auto (available memory unknown)"
    # (the figures of this rank's node; the text names none, as another rank may report it)
    return AUTO_FRACTION * available / local_ranks, (
        f"run.message_memory = auto: half of the node's available memory, shared by its "
        f"{local_ranks} rank(s)")


def ranks_to_fit(sample_bytes: np.ndarray, limit: float, shard) -> int | None:
    """The fewest ranks whose shards (``shard(num_samples, rank, ranks)``: sample ids) each need
    at most `limit` bytes; None when one sample alone needs more."""
    sample_bytes = np.asarray(sample_bytes, dtype=np.int64)
    n = len(sample_bytes)
    if n and sample_bytes.max() > limit:
        return None
    total = int(sample_bytes.sum())
    for ranks in range(max(1, int(np.ceil(total / limit))), n + 1):   # fewer cannot hold it all
        if all(sample_bytes[shard(n, r, ranks)].sum() <= limit for r in range(ranks)):
            return ranks
    return max(n, 1)   # one sample per rank: each fits (checked above)


def check_message_memory(owned, sizes, itemsize: int, num_samples: int, setting, comm, shard,
                         device=None) -> float:
    """Stop before training when any rank's messages (``sizes`` entries per owned sample, of
    ``itemsize`` bytes) need more than its run.message_memory: every rank raises the same
    MessageMemoryError (so none waits in a collective).  Returns this rank's limit.  Collective."""
    limit, how = message_memory_limit(setting, comm, device)
    ranks = comm.world_size
    table = np.zeros(2 * ranks)   # needed bytes and limit of every rank (float: inf allowed)
    table[comm.rank] = int(np.sum(sizes, dtype=np.int64)) * itemsize
    table[ranks + comm.rank] = -1.0 if np.isinf(limit) else limit
    comm.allreduce_(table)
    needed, limits = table[:ranks], np.where(table[ranks:] < 0, np.inf, table[ranks:])
    if np.all(needed <= limits):
        return limit
    worst = int(np.argmax(needed / limits))
    # the rare path: every sample's bytes, to say how many ranks would hold them
    sample_bytes = np.zeros(num_samples)
    sample_bytes[np.asarray(owned, dtype=np.int64)] = np.asarray(sizes, np.int64) * itemsize
    comm.allreduce_(sample_bytes)
    fit = ranks_to_fit(sample_bytes, float(limits.min()), shard)
    if fit is None:
        advice = (f"one sample alone needs {show_bytes(sample_bytes.max())}: "
                  f"raise run.message_memory")
    elif setting == "auto":
        advice = (f"spread the run over more nodes or GPUs ({fit} ranks at this limit) "
                  f"or set run.message_memory")
    else:
        advice = f"run with mpirun -n {fit} or raise run.message_memory"
    where = f"rank {worst} of {ranks}" if ranks > 1 else "the one process"
    raise MessageMemoryError(
        f"blend's messages need {int(needed[worst]):,} bytes ({show_bytes(needed[worst])}) on "
        f"{where}, more than its limit of {int(limits[worst]):,} bytes ({how}): {advice}")


def message_memory_report(store, comm, limit: float) -> str:
    """One line for the log: the messages' bytes in all and on every rank (as the stores hold
    them), and the limit.  Collective."""
    held = np.zeros(comm.world_size)
    held[comm.rank] = 0 if store is None else store.values.nbytes
    comm.allreduce_(held)
    per_rank = " ".join(f"{int(b):,}" for b in held) if len(held) <= 16 else \
        f"{int(held.min()):,} to {int(held.max()):,}"
    bound = "no limit" if np.isinf(limit) else f"limit {show_bytes(limit)} per rank"
    return (f"blend messages: {show_bytes(held.sum())} on {comm.world_size} rank(s), bytes per "
            f"rank: {per_rank} ({bound})")
