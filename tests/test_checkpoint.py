"""Checkpoints: exact resume (bitwise), elastic resume on another rank count, crash while writing,
and checkpoints that do not fit the run."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dstrain.checkpoint import latest_checkpoint, load_checkpoint
from dstrain.config import load_config
from dstrain.data import generate_words, open_words
from dstrain.learning import MessageStore, message_sizes
from dstrain.learning.params import load_messages
from dstrain.learning.trainer import build_model, build_optimizer, shard

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "words.h5"
    generate_words(path, num_train=103, num_val=21, num_test=10, seed=5, progress=False)
    return path


def sets(data, *extra):
    return ["--set", f"data.path={data}", "data.generate=false", "train.variant=joint",
            "train.epochs=3", "train.batch_size=20", "model.hidden=[16]", "run.checkpoint_every=2",
            "train.batching=global", *extra]


def train(run_dir, data, *extra, ranks=1, resume=None):
    command = [sys.executable, "-m", "dstrain.cli", "train", "--no-progress", "--config",
               str(ROOT / "configs" / "words_debug.yaml"), "--run-dir", str(run_dir),
               *(["--resume", resume] if resume else []), *sets(data, *extra)]
    if ranks > 1:
        command = [MPIRUN, "-n", str(ranks), "--oversubscribe"] + command
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=240)


def params(run_dir):
    with h5py.File(run_dir / "params.h5") as f:
        return {name: np.asarray(f[name]) for name in f}


def assert_same_run(a, b):
    pa, pb = params(a), params(b)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa), "parameters differ"
    ma, mb = load_messages(a / "messages.h5"), load_messages(b / "messages.h5")
    assert sorted(ma) == sorted(mb) and all(np.array_equal(ma[i], mb[i]) for i in ma)
    assert (a / "metrics.jsonl").read_text().count("\n") == (b / "metrics.jsonl").read_text().count("\n")


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
    config = load_config(ROOT / "configs" / "words_debug.yaml", sets(data)[1:])
    with open_words(data, "train") as split:
        for rank in range(new_ranks):
            owned = shard(split.num_samples, rank, new_ranks)
            _, _, lengths = split.read(owned)
            model = build_model(config, split)
            store = MessageStore(owned, message_sizes(lengths, model.num_classes, model.order))
            loop = load_checkpoint(checkpoint, model, build_optimizer(config, model), store)
            assert loop["step"] == 7
            for sample in owned:
                np.testing.assert_array_equal(store.of(sample), saved[int(sample)])
    done = train(tmp_path / "run", data, ranks=new_ranks, resume="auto")   # and training goes on
    assert done.returncode == 0, done.stderr
    assert "epoch   3" in done.stdout


def test_a_crash_while_writing_leaves_the_previous_checkpoint(data, tmp_path):
    assert train(tmp_path / "run", data, "train.max_steps=4").returncode == 0
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step-000000006.h5.tmp").write_bytes(b"half a checkpoint")   # never renamed
    (folder / "step-000000005.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    assert latest_checkpoint(tmp_path / "run").name == "step-000000004.h5"
    done = train(tmp_path / "run", data, resume="auto")
    assert done.returncode == 0 and "step 4" in done.stdout


def test_a_checkpoint_of_another_model_is_refused_in_one_line(data, tmp_path):
    assert train(tmp_path / "run", data, "train.max_steps=2").returncode == 0
    done = train(tmp_path / "other", data, "model.hidden=[32]",
                 resume=str(latest_checkpoint(tmp_path / "run")))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "checkpoint" in done.stderr
    assert "step-000000002.h5" in done.stderr
