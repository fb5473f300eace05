"""Checkpoints: exact resume (bitwise), elastic resume on another rank count, crash while writing,
and checkpoints that do not fit the run."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dstrain.checkpoint import latest_checkpoint, load_checkpoint
from dstrain.cli import main
from dstrain.config import load_config
from dstrain.tasks.words import generate_words, open_words
from dstrain.learning.params import load_messages
from dstrain.learning.trainer import build_model, build_optimizer, message_store, shard
from helpers import CONFIGS, MPI_ENV, MPIRUN, ROOT, dstrain, launcher, run_params, train_args, wait_for


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "words.h5"
    generate_words(path, num_train=103, num_val=21, num_test=10, seed=5, progress=False)
    return path


def sets(data, *extra):
    return [f"data.path={data}", "data.generate=false", "train.variant=joint",
            "train.epochs=3", "train.batch_size=20", "model.hidden=[16]", "run.checkpoint_every=2",
            "train.batching=global", *extra]


def train(run_dir, data, *extra, ranks=1, resume=None):
    """`dstrain train` in a subprocess (under mpirun for ranks > 1): a resumed run shares no
    process state with the run it continues."""
    return dstrain(*train_args("words_debug.yaml", run_dir, *sets(data, *extra), resume=resume),
                   ranks=ranks if ranks > 1 else 0, timeout=240)


def train_here(capfd, run_dir, data, *extra, resume=None):
    """`dstrain train` in this process (the CLI's main): (exit code, stdout, stderr)."""
    capfd.readouterr()
    code = main(train_args("words_debug.yaml", run_dir, *sets(data, *extra), resume=resume))
    return (code, *capfd.readouterr())


def assert_same_run(a, b):
    pa, pb = run_params(a), run_params(b)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa), "parameters differ"
    ma, mb = load_messages(a / "messages.h5"), load_messages(b / "messages.h5")
    assert sorted(ma) == sorted(mb) and all(np.array_equal(ma[i], mb[i]) for i in ma)
    assert (a / "metrics.jsonl").read_text().count("\n") == (b / "metrics.jsonl").read_text().count("\n")


@pytest.mark.slow
def test_exact_resume_in_one_process_is_bitwise(data, tmp_path):
    assert train(tmp_path / "straight", data).returncode == 0
    first = train(tmp_path / "stopped", data, "train.max_steps=7")
    assert first.returncode == 0, first.stderr
    assert latest_checkpoint(tmp_path / "stopped").name == "step-000000007.h5"
    done = train(tmp_path / "stopped", data, resume="auto")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_exact_resume_at_two_ranks_is_bitwise(data, tmp_path):
    assert train(tmp_path / "straight", data, ranks=2).returncode == 0
    assert train(tmp_path / "stopped", data, "train.max_steps=5", ranks=2).returncode == 0
    done = train(tmp_path / "stopped", data, ranks=2, resume="auto")
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
@pytest.mark.parametrize("new_ranks", [3, 1])
def test_elastic_resume_gives_every_sample_its_saved_messages(data, tmp_path, new_ranks):
    assert train(tmp_path / "run", data, "train.max_steps=7", ranks=2).returncode == 0
    checkpoint = latest_checkpoint(tmp_path / "run")
    saved = {}
    with h5py.File(checkpoint) as f:
        ids, offset, values = (np.asarray(f[f"messages/{k}"]) for k in ("sample_id", "offset", "values"))
    saved = {int(i): values[offset[k]:offset[k + 1]] for k, i in enumerate(ids)}
    # what each rank of the new run restores: only its own block of samples
    config = load_config(CONFIGS / "words_debug.yaml", sets(data))
    with open_words(data, "train") as split:
        for rank in range(new_ranks):
            owned = shard(split.num_samples, rank, new_ranks)
            _, labels = split.read(owned)
            model = build_model(config, split)
            store = message_store(model, owned, labels)
            loop = load_checkpoint(checkpoint, model, build_optimizer(config, model), store)
            assert loop["step"] == 7
            for sample in owned:
                np.testing.assert_array_equal(store.of(sample), saved[int(sample)])
    done = train(tmp_path / "run", data, ranks=new_ranks, resume="auto")   # and training goes on
    assert done.returncode == 0, done.stderr
    assert "epoch   3" in done.stdout


def test_a_crash_while_writing_leaves_the_previous_checkpoint(data, tmp_path, capfd):
    assert train_here(capfd, tmp_path / "run", data, "train.max_steps=4")[0] == 0
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step-000000006.h5.tmp").write_bytes(b"half a checkpoint")   # never renamed
    (folder / "step-000000005.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    assert latest_checkpoint(tmp_path / "run").name == "step-000000004.h5"
    code, out, _ = train_here(capfd, tmp_path / "run", data, resume="auto")
    assert code == 0 and "resumed from" in out and "step 4" in out


def test_a_checkpoint_of_another_model_is_refused_in_one_line(data, tmp_path, capfd):
    assert train_here(capfd, tmp_path / "run", data, "train.max_steps=2")[0] == 0
    code, _, err = train_here(capfd, tmp_path / "other", data, "model.hidden=[32]",
                              resume=str(latest_checkpoint(tmp_path / "run")))
    assert code == 2
    assert err.strip().count("\n") == 0 and "checkpoint" in err
    assert "step-000000002.h5" in err


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(data, tmp_path):
    command = [sys.executable, "-m", "dstrain.cli", *train_args(
        "words_debug.yaml", tmp_path / "run", *sets(data, "train.epochs=200", "run.checkpoint_every=0"))]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=MPI_ENV)
    assert wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists()
                     and (tmp_path / "run" / "metrics.jsonl").read_text())   # training is under way
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert "stopped by signal" in out
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None
    done = train(tmp_path / "run", data, "train.epochs=4", resume="auto")   # and it resumes
    assert done.returncode == 0, done.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_kill_9_of_one_rank_ends_the_job_and_the_last_checkpoint_resumes(data, tmp_path):
    run_dir = tmp_path / "run"
    command = [*launcher(2), sys.executable, "-m", "dstrain.cli",
               *train_args("words_debug.yaml", run_dir, *sets(data, "train.epochs=200"))]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=MPI_ENV)
    assert wait_for(lambda: latest_checkpoint(run_dir) is not None)
    found = subprocess.run(["pgrep", "-f", f"dstrain.cli train.*{run_dir}"], capture_output=True,
                           text=True).stdout.split()
    # the ranks, not mpirun (whose command line names the run directory too)
    ranks = [pid for pid in found
             if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == sys.executable.encode()]
    assert len(ranks) == 2
    os.kill(int(ranks[1]), signal.SIGKILL)
    started = time.monotonic()
    job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - started < 60
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).stdout == b""
    done = train(run_dir, data, "train.epochs=4", ranks=2, resume="auto")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout


def test_a_non_finite_loss_stops_the_run_naming_step_and_rank(data, tmp_path):
    broken = tmp_path / "nan.h5"
    shutil.copy(data, broken)
    with h5py.File(broken, "r+") as f:     # one word of float images with a NaN pixel
        x = np.asarray(f["train/x"]).astype(np.float32) / 255
        x[50, 0, 3, 3] = np.nan
        del f["train/x"]
        f.create_dataset("train/x", data=x)
    done = train(tmp_path / "run", broken, "run.checkpoint_every=1", "train.epochs=1")
    assert done.returncode == 1
    assert "non-finite loss or gradient at step" in done.stderr and "on rank 0" in done.stderr
    failed_at = int(done.stderr.split("at step ")[1].split(",")[0])
    kept = latest_checkpoint(tmp_path / "run")
    assert kept is not None and int(kept.stem.split("-")[1]) == failed_at - 1
    with h5py.File(kept) as f:
        assert all(np.isfinite(np.asarray(f[f"params/{name}"])).all() for name in f["params"])
