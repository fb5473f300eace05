"""The communication module in one process: launcher table, bucketed reducer, single-process comm."""
import numpy as np
import torch

from dstrain.comm import GradientReducer, SingleProcess, init, launcher_environment


def test_launcher_table():
    assert launcher_environment({}) is None
    assert launcher_environment({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                                 "OMPI_COMM_WORLD_SIZE": "8"}) == ("Open MPI", 3, 1, 8)
    assert launcher_environment({"PMI_RANK": "2", "PMI_SIZE": "4"}) == ("MPICH/Hydra", 2, 0, 4)
    assert launcher_environment({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "6",
                                 "SLURM_STEP_ID": "0"}) == ("Slurm", 5, 1, 6)
    # the batch script of a 6-task job is one process, not a launched rank
    assert launcher_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "6"}) is None


def test_plain_python_gets_a_single_process_communicator():
    comm = init("none")
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.world_size) == (0, 1)


def test_reducer_divides_by_the_count_in_small_buckets_and_keeps_views():
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Linear(20, 3)).double()
    reducer = GradientReducer(model.parameters(), SingleProcess(), bucket_bytes=30 * 20 * 8)
    assert len(reducer.buckets) >= 2
    x = torch.randn(7, 30, dtype=torch.float64)
    model(x).sum().backward()
    expected = {n: p.grad.clone() / 7 for n, p in model.named_parameters()}
    assert reducer.reduce(7)[0] == 7
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name])
    # a gradient replaced behind the reducer's back is copied into its bucket again
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    reducer.reduce(2)
    assert np.allclose(first.grad.numpy(), 0.5) and first.grad is reducer.views[first]


def test_only_the_comm_module_imports_mpi4py():
    from pathlib import Path
    package = Path(__file__).resolve().parents[1] / "dstrain"
    importers = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if "import mpi4py" in path.read_text() or "from mpi4py" in path.read_text()]
    assert importers == ["comm.py"]
