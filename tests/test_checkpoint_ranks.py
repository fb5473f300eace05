"""Checkpoints across ranks: rank 0 writes every rank's blend messages by global sample id, and
each rank of a run with another split of the samples reads back exactly its own.

Rank-agnostic: the file passes alone (one process) and under
`mpirun -n N python -m pytest tests/test_checkpoint_ranks.py` (tests/test_mpi.py runs it so).
"""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dstrain.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dstrain.learning import MessageStore
from dstrain.learning.trainer import shard

# a rank stuck in a collective: the timeout thread ends its process, and mpirun the job
pytestmark = pytest.mark.timeout(60, method="thread")
NUM_SAMPLES = 11                        # no rank count of 2..4 divides it: uneven shards


@pytest.fixture
def shared_dir(comm, tmp_path):
    """One folder for all ranks (they run on one machine): rank 0's tmp_path, its name broadcast."""
    name = np.zeros(4096, dtype=np.uint8)
    encoded = str(tmp_path).encode()
    name[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    comm.broadcast_(name)
    return Path(bytes(name).rstrip(b"\0").decode())


def sizes_of(ids):
    return 1 + np.asarray(ids) % 4             # messages of different lengths per sample


def messages_of(sample: int) -> np.ndarray:
    return sample * 100.0 + np.arange(sizes_of(sample))


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()                           # momentum buffers: optimiser state to save
    return model, optimizer


def test_a_checkpoint_resumes_on_another_split_of_the_samples(comm, shared_dir):
    owned = shard(NUM_SAMPLES, comm.rank, comm.world_size)
    store = MessageStore(owned, sizes_of(owned))
    store.scatter(owned, np.concatenate([messages_of(int(i)) for i in owned]))
    model, optimizer = model_and_optimizer()
    path = shared_dir / "checkpoints" / "step-000000003.h5"
    save_checkpoint(path, model, optimizer, {"step": 3}, "train: {}\n", store, comm)
    comm.barrier()                             # rank 0 has written it
    # the new run splits the samples the other way round
    mine = shard(NUM_SAMPLES, comm.world_size - 1 - comm.rank, comm.world_size)
    restored = MessageStore(mine, sizes_of(mine))
    fresh = torch.nn.Linear(3, 2).double()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    loop = load_checkpoint(path, fresh, fresh_optimizer, restored)
    assert loop == {"step": 3} and latest_checkpoint(shared_dir) == path
    for sample in mine:
        np.testing.assert_array_equal(restored.of(sample), messages_of(int(sample)))
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(fresh_optimizer.state[a]["momentum_buffer"],
                           optimizer.state[b]["momentum_buffer"])
               for a, b in zip(fresh.parameters(), model.parameters()))
    with h5py.File(path) as f:                 # one copy of every sample, in id order
        assert np.asarray(f["messages/sample_id"]).tolist() == list(range(NUM_SAMPLES))
        assert len(f["messages/values"]) == sizes_of(np.arange(NUM_SAMPLES)).sum()
