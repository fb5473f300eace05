"""The communicator and the gradient reducer, checked for any number of ranks.

Rank-agnostic: the file passes alone (one process, the single-process communicator) and under
`mpirun -n N python -m pytest tests/test_comm_ranks.py` (MPI, every rank runs every test);
tests/test_mpi.py runs it so.  Each test calls its collectives before it asserts anything, so a
failure on one rank cannot leave the others waiting in a collective.
"""
import numpy as np
import pytest
import torch

from dstrain.comm import GradientReducer, launcher_environment

# a rank stuck in a collective: the timeout thread ends its process, and mpirun the job
pytestmark = pytest.mark.timeout(60, method="thread")


def test_the_communicator_spans_the_launched_ranks(comm):
    ranks = comm.gather_rows(np.array([comm.rank]))
    launched = launcher_environment()
    assert (comm.rank, comm.world_size) == ((launched[1], launched[3]) if launched else (0, 1))
    if comm.is_root:
        assert ranks.tolist() == list(range(comm.world_size))
    else:
        assert ranks is None


def test_allreduce_sums_and_takes_the_extremes(comm):
    size, rank = comm.world_size, comm.rank
    total = comm.allreduce_(np.arange(5.0) * (rank + 1))
    high = comm.allreduce_(np.array([rank, -rank], dtype=np.int64), op="max")
    low = comm.allreduce_(np.array([rank, -rank], dtype=np.int64), op="min")
    assert total.tolist() == (np.arange(5.0) * size * (size + 1) / 2).tolist()
    assert high.tolist() == [size - 1, 0] and low.tolist() == [0, 1 - size]


def test_broadcast_gives_every_rank_the_roots_values(comm):
    values = comm.broadcast_(np.full(4, float(comm.rank + 7)))
    assert values.tolist() == [7.0] * 4


def test_gather_rows_concatenates_uneven_blocks_in_rank_order(comm):
    # rank r sends r rows (rank 0 none), then r + 1 rows
    first = comm.gather_rows(np.full(comm.rank, comm.rank, dtype=np.int64))
    second = comm.gather_rows(np.full(comm.rank + 1, 0.5 + comm.rank))
    if comm.is_root:
        assert first.tolist() == [r for r in range(comm.world_size) for _ in range(r)]
        assert second.tolist() == [0.5 + r for r in range(comm.world_size) for _ in range(r + 1)]
        assert first.dtype == np.int64 and second.dtype == np.float64
    else:
        assert first is None and second is None


def _parameters():
    return [torch.nn.Parameter(torch.zeros(n, dtype=torch.float64)) for n in (5, 300, 7)]


def test_every_route_sums_gradients_and_divides_by_the_global_count(comm):
    """None: the CPU route (numpy views); stage and device: the CUDA routes forced onto CPU
    tensors (through a host copy; the tensor itself handed to mpi4py, as to a CUDA-aware MPI)."""
    size, rank = comm.world_size, comm.rank
    results = {}
    for route in (None, "stage", "device"):
        params = _parameters()
        reducer = GradientReducer(params, comm, bucket_bytes=800, _route=route)   # 3 buckets
        for p in params:
            p.grad.copy_(torch.arange(p.numel(), dtype=torch.float64) * (rank + 1) + 0.1)
        count, flags = reducer.reduce(rank + 2, (rank, 1))
        results[route] = (count, flags.tolist(), [p.grad.clone() for p in params], reducer.routes)
    count, flags, grads, routes = results[None]
    assert routes == ["host"] * 3
    assert count == sum(r + 2 for r in range(size))
    assert flags == [sum(range(size)), size]
    for g in grads:
        expected = (torch.arange(len(g), dtype=torch.float64) * sum(range(1, size + 1))
                    + 0.1 * size) / count
        torch.testing.assert_close(g, expected)
    for route in ("stage", "device"):
        assert results[route][3] == [route] * 3
        assert results[route][:2] == results[None][:2], route
        assert all(torch.equal(a, b) for a, b in zip(results[route][2], grads)), route


def test_one_ranks_non_finite_gradient_reaches_every_rank(comm):
    params = _parameters()
    reducer = GradientReducer(params, comm)
    if comm.rank == comm.world_size - 1:
        params[1].grad[3] = float("nan")
    _, flags = reducer.reduce(1, (0, not reducer.gradients_finite()))
    assert flags.tolist() == [0, 1]


def test_broadcast_parameters_makes_every_rank_start_from_the_roots(comm):
    torch.manual_seed(comm.rank)            # a different model on every rank
    model = torch.nn.Linear(6, 3).double()
    reducer = GradientReducer(model.parameters(), comm)
    identical_before = reducer.parameters_identical()
    reducer.broadcast_parameters()
    identical_after = reducer.parameters_identical()
    torch.manual_seed(0)
    root = torch.nn.Linear(6, 3).double()
    assert identical_before == (comm.world_size == 1) and identical_after
    for mine, theirs in zip(model.parameters(), root.parameters()):
        assert torch.equal(mine, theirs)
