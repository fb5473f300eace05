"""The CUDA kernels of cuda/convex_bp.cu against the CPU engine, without a GPU.

The same .cu source runs here compiled by g++ (dstrain.gpu.emulator: each thread in turn, in
both orders), driven by the same DeviceBP code that drives it through CuPy on a GPU; NVRTC, the
compiler CuPy uses, compiles it when its library is installed (the test extras bring it).
On a GPU, tests/test_gpu.py and bench/gpu_check.sh run the real thing.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import subprocess
import zipfile
import sys

import numpy as np
import pytest

from dstrain.graph import GraphBatch, RegionGraph, chain, fully_connected, grid
from dstrain.gpu import engine, kernel_source
from dstrain.gpu.emulator import EmulatedKernels
from dstrain.inference import ConvexBP
from helpers import random_loopy, random_tree, run_on_both

SOURCE = kernel_source("convex_bp.cu")


def test_table_columns_match_the_kernel_source():
    text = SOURCE.read_text()
    defines = dict(re.findall(r"#define (\w+) (\d+)", text))
    for prefix, names in (("EDGE_", engine.EDGE_FIELDS), ("REGION_", engine.REGION_FIELDS)):
        assert [int(defines[prefix + n]) for n in names] == list(range(len(names)))
        assert int(defines[prefix + "FIELDS"]) == len(names)
    assert [int(defines["EDGE_" + n]) for n in engine.EDGE_REALS] == [0, 1]
    assert {k: int(defines["KIND_" + k]) for k in engine.KINDS} == engine.KINDS


def mixed_graphs(rng):
    """Every path of the kernels: fast pairs (both orientations, square and not), generic
    parents with children (triples), max parents (eps c = 0), bethe (negative c), variable-length
    1st/2nd-order chains, fully connected binary, grids, trees."""
    hierarchy = random_loopy(rng)
    zero_pairs = np.where([len(r) == 2 and bool(hierarchy.parents[k])
                           for k, r in enumerate(hierarchy.regions)], 0.0, 1.0)
    return [
        random_loopy(rng), random_loopy(rng, counting_numbers="bethe"),
        RegionGraph(hierarchy.cardinalities, hierarchy.regions, counting_numbers=zero_pairs),
        RegionGraph(hierarchy.cardinalities, hierarchy.regions, eps=0.3,
                    counting_numbers=rng.uniform(0.5, 2.0, len(hierarchy.regions))),
        fully_connected(5, 2), grid(2, 3, 3), random_tree(rng, 6, counting_numbers="bethe"),
        *[chain(int(n), 4, order=2) for n in rng.integers(1, 7, 3)],
        *[chain(int(n), 3, order=1) for n in rng.integers(1, 7, 3)],
    ]


def compare(batch, kernels, rng, sweeps=4, scale=2.0):
    """DeviceBP on `kernels` against ConvexBP (float64) on fresh random inputs."""
    dtype = kernels.dtype
    potentials = rng.normal(scale=scale, size=batch.num_potentials)
    messages = rng.normal(size=batch.num_messages)
    outputs, device, cpu = run_on_both(batch, kernels, potentials, messages, sweeps)
    for name, mine in outputs.items():
        expected = getattr(cpu, name)
        assert mine.dtype == dtype and np.isfinite(mine).all(), name   # every element written
        if dtype == np.float64:
            np.testing.assert_allclose(mine, expected, rtol=1e-9, atol=1e-9, err_msg=name)
        else:   # float32: relative to each quantity's magnitude
            error = np.abs(mine - expected).max() / max(np.abs(expected).max(), 1.0)
            limit = 1e-4
            if name == "beliefs":   # float32 spacing at |f| = 1e4 is 1e-3: exp of differences of
                limit *= max(1.0, scale / 200)   # such numbers carries that error (measured 6e-4)
            assert error <= limit, (name, error)
    assert device.sweeps == sweeps
    assert device.max_change == pytest.approx(cpu.max_change, rel=1e-4, abs=1e-4 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_kernels_equal_the_cpu_engine_on_a_mixed_batch(dtype, reverse, seed):
    rng = np.random.default_rng(500 + seed)     # fresh random inputs per case, never zeros
    compare(GraphBatch(mixed_graphs(rng)), EmulatedKernels(dtype, reverse=reverse), rng)


@pytest.mark.parametrize("make", [lambda rng: [random_loopy(rng)] * 2,
                                  lambda rng: [fully_connected(6)] * 30,
                                  lambda rng: [chain(5, 26, order=2)] * 40])
def test_potentials_of_magnitude_1e4_stay_finite_and_accurate_in_float32(make, rng):
    compare(GraphBatch(make(rng)), EmulatedKernels(np.float32), rng, sweeps=6, scale=1e4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_regions_of_4096_and_more_states(dtype, rng):
    # no per-thread arrays in the kernels: a triple of 16^3 = 4096 states (a generic parent of
    # three pairs) and a 70 x 70 = 4900-state pair go through the same code as small regions
    triple = RegionGraph([16, 16, 16], [(0, 1, 2), (0, 1), (1, 2), (0, 2), (0,), (1,), (2,)])
    big_pair = RegionGraph([70, 70], [(0, 1), (0,), (1,)])
    compare(GraphBatch([triple, big_pair, triple]), EmulatedKernels(dtype), rng, sweeps=3)


def test_converge_stops_after_the_same_sweeps_as_the_cpu_engine(rng):
    batch = GraphBatch([chain(int(n), 5, order=2) for n in (4, 7, 2, 9)] + [random_loopy(rng)])
    potentials = rng.normal(size=batch.num_potentials)
    cpu = ConvexBP(batch).run(potentials, max_sweeps=200, tol=1e-7)
    device = engine.DeviceBP(batch, EmulatedKernels(np.float64)).run(potentials, max_sweeps=200,
                                                                       tol=1e-7)
    assert cpu.converged and device.converged and 3 < device.sweeps == cpu.sweeps < 200
    np.testing.assert_allclose(device.beliefs, cpu.beliefs, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fully_connected_binary_batches_take_the_cpu_gap_path_and_agree(dtype, rng):
    # all-binary batches use the CPU engine's gap-form update: same messages and same change
    compare(GraphBatch([fully_connected(7, 2)] * 6), EmulatedKernels(dtype), rng, sweeps=5)
    batch = GraphBatch([fully_connected(6, 2)] * 4)
    potentials = rng.normal(size=batch.num_potentials)
    cpu = ConvexBP(batch).run(potentials, max_sweeps=500, tol=1e-9)
    device = engine.DeviceBP(batch, EmulatedKernels(np.float64)).run(potentials, max_sweeps=500,
                                                                       tol=1e-9)
    assert cpu.converged and device.sweeps == cpu.sweeps


def test_batch_without_messages_gives_softmax_beliefs(rng):
    batch = GraphBatch([RegionGraph([3, 4], [(0,), (1,)])] * 2)
    potentials = rng.normal(size=batch.num_potentials)
    device = engine.DeviceBP(batch, EmulatedKernels(np.float64)).run(potentials, max_sweeps=5)
    cpu = ConvexBP(batch).run(potentials, max_sweeps=5)
    assert device.sweeps == 0 and device.converged
    np.testing.assert_allclose(device.beliefs, cpu.beliefs, atol=1e-12)
    np.testing.assert_allclose(device.dual, cpu.dual, atol=1e-12)


def test_run_leaves_the_callers_messages_alone_and_checks_shapes(rng):
    batch = GraphBatch([chain(4, 3, order=1)])
    bp = engine.DeviceBP(batch, EmulatedKernels(np.float64))
    messages = rng.normal(size=batch.num_messages)
    kept = messages.copy()
    bp.run(rng.normal(size=batch.num_potentials), messages, max_sweeps=2, tol=0.0)
    np.testing.assert_array_equal(messages, kept)
    with pytest.raises(ValueError, match="expected a flat vector of"):
        bp.run(np.zeros(batch.num_potentials + 1))
    with pytest.raises(ValueError, match="messages: expected"):
        bp.run(np.zeros(batch.num_potentials), np.zeros(3))


def _nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel (test extras) or a CUDA toolkit, else None."""
    patterns = [os.path.join(p, "nvidia", "*", "lib", "libnvrtc.so*") for p in sys.path]
    patterns += ["/usr/local/cuda/lib64/libnvrtc.so*", "/usr/lib/x86_64-linux-gnu/libnvrtc.so*"]
    found = sorted(f for p in patterns for f in glob.glob(p) if "builtins" not in f)
    return ctypes.CDLL(found[0]) if found else None


@pytest.mark.parametrize("real", ["float", "double"])
def test_nvrtc_compiles_the_kernels_as_cupy_will(real):
    nvrtc = _nvrtc_library()
    if nvrtc is None:
        pytest.skip("NVRTC library not installed (pip install nvidia-cuda-nvrtc)")
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), SOURCE.read_bytes(),
                                    SOURCE.name.encode(), 0, None, None) == 0
    # the oldest standard a CuPy might ask for: the source must not need a newer one
    options = [b"-std=c++11", f"-DDSTRAIN_REAL={real}".encode(), b"--gpu-architecture=compute_80"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode()
    assert "warning" not in log.value.decode().lower(), log.value.decode()


def test_an_installed_package_finds_its_kernels(tmp_path):
    """`pip install .` (not editable) ships cuda/*.cu, the emulator's host files and the Slurm
    template of `dstrain submit`."""
    root = SOURCE.resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel"), str(root)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("dstrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dstrain/kernels/convex_bp.cu", "dstrain/kernels/host/launch.cpp",
            "dstrain/kernels/host/cuda_host.h", "dstrain/templates/train.sbatch"} <= set(names)
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; "
             "from dstrain.gpu import kernel_source; from dstrain.gpu.emulator import EmulatedKernels; "
             "print(kernel_source('convex_bp.cu')); EmulatedKernels(np.float32)")
    found = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(site / "dstrain" / "kernels" / "convex_bp.cu")
