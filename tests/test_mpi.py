"""Sample-parallel training under a real `mpirun`: parity with one process, fail-fast, rank-0 output.

Each test launches `mpirun -n K dstrain train ...` as a subprocess (oversubscribed past the core
count), so the default `pytest` run exercises real MPI wherever mpi4py and mpirun are installed;
elsewhere these tests skip, saying why.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dstrain.tasks.words import generate_words
from dstrain.learning.params import load_messages
from helpers import run_params

pytestmark = pytest.mark.mpi
ROOT = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def _mpi_available() -> str | None:
    if MPIRUN is None:
        return "no mpirun on PATH or beside the interpreter"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'dstrain[mpi]')"
    return None


if _mpi_available():
    pytest.skip(_mpi_available(), allow_module_level=True)

OPEN_MPI = "Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
# Open MPI refuses to run as root (CI runs as root) unless told
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def mpirun(ranks, *args, env=None, timeout=120):
    command = [MPIRUN, "-n", str(ranks)] + (["--oversubscribe"] if OPEN_MPI else [])
    command += [sys.executable, "-m", "dstrain.cli", "train", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})}, cwd=ROOT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "words.h5"
    # 103 training words: no rank count divides it, so shards and last batches are uneven
    generate_words(path, num_train=103, num_val=21, num_test=10, seed=2, progress=False)
    return path


def settings(data, run_dir, *extra):
    return ["--config", str(ROOT / "configs" / "words_debug.yaml"), "--run-dir", str(run_dir),
            "--set", f"data.path={data}", "data.generate=false", "train.variant=joint",
            "train.epochs=2", "train.batch_size=20", "train.batching=global", "model.hidden=[16]",
            "run.check_sync_every=1", *extra]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """The one-process run every multi-rank run must reproduce (float64 and float32)."""
    runs = {}
    for dtype in ("float64", "float32"):
        run_dir = tmp_path_factory.mktemp(f"single-{dtype}")
        done = subprocess.run([sys.executable, "-m", "dstrain.cli", "train", "--no-progress",
                               *settings(data, run_dir, f"run.dtype={dtype}")],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        runs[dtype] = run_dir
    return runs


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_parameters_and_messages_equal_the_single_process_run(ranks, data, single, tmp_path):
    done = mpirun(ranks, *settings(data, tmp_path, "run.dtype=float64"))
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = run_params(single["float64"]), run_params(tmp_path)
    for name in expected:
        assert np.abs(got[name] - expected[name]).max() <= 1e-10, name
    mine, theirs = load_messages(tmp_path / "messages.h5"), load_messages(single["float64"] / "messages.h5")
    assert sorted(mine) == list(range(103))
    for sample in theirs:
        np.testing.assert_allclose(mine[sample], theirs[sample], atol=1e-10, rtol=0)


def test_two_ranks_on_the_gpu_code_path_equal_one_cpu_process(data, single, tmp_path):
    # the kernels emulated on the CPU: device-resident messages and torch-tensor gradients per rank
    done = mpirun(2, *settings(data, tmp_path, "run.dtype=float64"),
                  env={"DSTRAIN_EMULATE_KERNELS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = run_params(single["float64"]), run_params(tmp_path)
    for name in expected:
        assert np.abs(got[name] - expected[name]).max() <= 1e-10, name
    mine, theirs = load_messages(tmp_path / "messages.h5"), load_messages(single["float64"] / "messages.h5")
    assert max(np.abs(mine[s] - theirs[s]).max() for s in theirs) <= 1e-10


def test_float32_parity_within_1e_5_relative(data, single, tmp_path):
    done = mpirun(2, *settings(data, tmp_path, "run.dtype=float32"))
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = run_params(single["float32"]), run_params(tmp_path)
    for name in expected:
        scale = max(np.abs(expected[name]).max(), 1e-3)
        assert np.abs(got[name] - expected[name]).max() <= 1e-5 * scale, name


def test_rank_0_alone_writes_and_logs(data, tmp_path):
    done = mpirun(3, *settings(data, tmp_path, "train.batching=local"))
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2                                   # one log line per epoch, not per rank
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert '"ranks": 3' in (tmp_path / "metrics.jsonl").read_text()


def test_a_failing_rank_ends_the_job_quickly_and_says_where(data, tmp_path):
    started = time.monotonic()
    done = mpirun(2, *settings(data, tmp_path), env={"DSTRAIN_FAULT_STEP": "3",
                                                     "DSTRAIN_FAULT_RANK": "1"}, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    assert "error on rank 1 of 2: injected fault at step 3" in done.stderr
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "processes left behind"
