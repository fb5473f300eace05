"""Shared pytest configuration for dstrain's tests.

- Tests marked ``gpu`` are skipped unless CuPy imports and sees at least one CUDA device.
- The ``rng`` fixture gives each test a freshly seeded numpy Generator.
- The ``cpu_path`` fixture runs a test on both CPU paths of the engine: its C kernels and numpy.
- The ``comm`` fixture is this process's communicator: MPI when the tests run under `mpirun`
  (the rank-agnostic files, see tests/test_mpi.py), the single-process one otherwise.
"""
import numpy as np
import pytest

SEED = 20150706


def _cuda_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU / CuPy available")
    for item in gpu_items:
        item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def comm():
    """This process's communicator (MPI only when a launcher started several processes)."""
    from dstrain.comm import init

    return init("auto")


@pytest.fixture(params=["kernels", "numpy"])
def cpu_path(request, monkeypatch):
    """Both CPU paths of the engine's compiled steps (the exp tables, the pairs' beliefs, a
    sweep's products with the pair tables, the dense engine's start, sweep and read-outs): the
    kernels of dstrain/inference/cpu_kernels.c
    and numpy's (what runs where no C compiler is)."""
    from dstrain.inference import cpu_kernels

    if request.param == "numpy":
        monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    else:
        assert cpu_kernels.library() is not None, cpu_kernels.status()
    return request.param
