"""Saving blend's messages: rank 0 writes every rank's shard by global sample id, receiving one
shard at a time.  Rank-agnostic: passes alone (one process) and under `mpirun -n N python -m
pytest tests/test_message_saving.py`, which tests/test_mpi.py runs."""
import tracemalloc

import h5py
import numpy as np
import pytest

from dstrain.learning.messages import MessageStore
from dstrain.learning.params import load_messages, save_messages

# a rank stuck in a collective: the timeout thread ends its process, and mpirun the job
pytestmark = pytest.mark.timeout(60, method="thread")
SAMPLES_PER_RANK, SIZE = 64, 4096      # 2 MiB of float64 messages per rank


def value_of(sample_id: int) -> np.ndarray:
    return sample_id * 10_000.0 + np.arange(SIZE)


def shard_store(comm) -> MessageStore:
    ids = np.arange(comm.rank * SAMPLES_PER_RANK, (comm.rank + 1) * SAMPLES_PER_RANK)
    store = MessageStore(ids, np.full(len(ids), SIZE))
    store.scatter(ids, np.concatenate([value_of(i) for i in ids]))
    return store


def test_every_rank_s_messages_land_in_one_file_by_sample_id(comm, tmp_path):
    # rank 0's temporary folder is the one every rank writes to (a name all ranks agree on)
    token = comm.broadcast_(np.array([np.random.default_rng().integers(1 << 62)]))[0]
    path = tmp_path.parent / f"messages-{token}.h5"
    store = shard_store(comm)
    tracemalloc.start()
    save_messages(store, comm, path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    comm.barrier()
    shard_bytes = SAMPLES_PER_RANK * SIZE * 8
    if comm.is_root:
        # rank 0 held its own shard before and at most one received shard while saving
        # (gathering everything would take world_size shards and a sorted copy)
        assert peak < shard_bytes * 1.25 if comm.world_size > 1 else peak < shard_bytes * 0.25
        loaded = load_messages(path)
        assert sorted(loaded) == list(range(comm.world_size * SAMPLES_PER_RANK))
        for sample_id in (0, SAMPLES_PER_RANK - 1, len(loaded) - 1):
            np.testing.assert_array_equal(loaded[sample_id], value_of(sample_id))
        with h5py.File(path) as f:
            assert np.all(np.diff(f["sample_id"][:]) > 0)
        path.unlink()   # (no collective after an assertion: a failing rank 0 must not hang the rest)
