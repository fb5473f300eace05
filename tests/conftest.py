"""Shared pytest configuration for dstrain's tests.

- Tests marked ``gpu`` are skipped unless CuPy imports and sees at least one CUDA device.
- The ``rng`` fixture gives each test a freshly seeded numpy Generator.
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
