"""Sample-parallel training under a real `mpirun`: parity with one process, fail-fast, rank-0
output; and the rank-agnostic test files run on several ranks.

Each test launches `mpirun -n K ...` as a subprocess (oversubscribed past the core count), so the
default `pytest` run exercises real MPI wherever mpi4py and mpirun are installed; elsewhere these
tests skip, saying why.
"""
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dstrain.tasks.words import generate_words
from dstrain.learning.params import load_messages
from helpers import dstrain, mpi_missing, pytest_under_mpirun, run_params, train_args

pytestmark = pytest.mark.mpi
if mpi_missing():
    pytest.skip(mpi_missing(), allow_module_level=True)

HERE = Path(__file__).resolve().parent
# checks written for any number of ranks: each passes alone and under mpirun
RANK_AGNOSTIC = ("test_comm_ranks.py", "test_checkpoint_ranks.py", "test_message_saving.py")


def mpirun(ranks, data, run_dir, *extra, timeout=120):
    return dstrain(*settings(data, run_dir, *extra), ranks=ranks, timeout=timeout)


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_rank_agnostic_files_pass_on_every_rank(ranks):
    files = [HERE / name for name in RANK_AGNOSTIC]
    done = pytest_under_mpirun(files, ranks)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # one summary per rank, each counting every test of the files: none skipped, failed or erred
    tests = sum(len(re.findall(r"^def test_", f.read_text(), re.M)) for f in files)
    summaries = re.findall(r"^(\d+) passed(.*) in [\d.]+s", done.stdout, re.M)
    assert [int(passed) for passed, _ in summaries] == [tests] * ranks, done.stdout[-3000:]
    assert not any(re.search("skipped|failed|error", rest) for _, rest in summaries), summaries


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "words.h5"
    # 103 training words: no rank count divides it, so shards and last batches are uneven
    generate_words(path, num_train=103, num_val=21, num_test=10, seed=2, progress=False)
    return path


def settings(data, run_dir, *extra):
    return train_args("words_debug.yaml", run_dir, f"data.path={data}", "data.generate=false",
                      "train.variant=joint", "train.epochs=2", "train.batch_size=20",
                      "train.batching=global", "model.hidden=[16]", "run.check_sync_every=1", *extra)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """The one-process run every multi-rank run must reproduce (float64 and float32)."""
    runs = {}
    for dtype in ("float64", "float32"):
        run_dir = tmp_path_factory.mktemp(f"single-{dtype}")
        done = dstrain(*settings(data, run_dir, f"run.dtype={dtype}"), timeout=120)
        assert done.returncode == 0, done.stderr
        runs[dtype] = run_dir
    return runs


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_parameters_and_messages_equal_the_single_process_run(ranks, data, single, tmp_path):
    done = mpirun(ranks, data, tmp_path, "run.dtype=float64")
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
    done = mpirun(2, data, tmp_path, "run.dtype=float64", "debug.emulate_kernels=true")
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = run_params(single["float64"]), run_params(tmp_path)
    for name in expected:
        assert np.abs(got[name] - expected[name]).max() <= 1e-10, name
    mine, theirs = load_messages(tmp_path / "messages.h5"), load_messages(single["float64"] / "messages.h5")
    assert max(np.abs(mine[s] - theirs[s]).max() for s in theirs) <= 1e-10


def test_float32_parity_within_1e_5_relative(data, single, tmp_path):
    done = mpirun(2, data, tmp_path, "run.dtype=float32")
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = run_params(single["float32"]), run_params(tmp_path)
    for name in expected:
        scale = max(np.abs(expected[name]).max(), 1e-3)
        assert np.abs(got[name] - expected[name]).max() <= 1e-5 * scale, name


def test_rank_0_alone_writes_and_logs(data, tmp_path):
    done = mpirun(3, data, tmp_path, "train.batching=local")
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2                                   # one log line per epoch, not per rank
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert '"ranks": 3' in (tmp_path / "metrics.jsonl").read_text()


def test_a_failing_rank_ends_the_job_quickly_and_says_where(data, tmp_path):
    started = time.monotonic()
    done = mpirun(2, data, tmp_path, "debug.fault_step=3", "debug.fault_rank=1", timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    assert "error on rank 1 of 2: injected fault at step 3" in done.stderr
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "processes left behind"
