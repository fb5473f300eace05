"""The `dstrain` command: a short training run end to end, eval, plot, and bad input.

Bad input must end with one line on stderr, exit code 2 and no traceback; these run the real
console entry point in a subprocess, as a user would.
"""
import json

import h5py
import numpy as np
import pytest

from dstrain.cli import main
from dstrain.tasks.words import generate_words
from helpers import CONFIGS, dstrain

DEBUG = str(CONFIGS / "words_debug.yaml")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.h5"
    generate_words(path, num_train=120, num_val=40, num_test=40, seed=1, progress=False)
    return path


def test_info_lists_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dstrain ") and "numpy" in out and "mpi4py" in out
    assert "CPU kernels built with" in out   # (the tests need a C compiler)


def test_train_eval_plot_end_to_end(small_data, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--config", DEBUG, "--run-dir", str(run_dir), "--no-progress", "--set",
                 f"data.path={small_data}", "train.epochs=3", "train.pretrain_epochs=1",
                 "train.batch_size=20"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["unary", "joint", "joint"]
    assert all(0 <= r["val_char_accuracy"] <= 1 for r in rows)
    with h5py.File(run_dir / "params.h5") as f:
        assert "pairwise.tables.0" in f and "pairwise.tables.1" in f
        assert np.any(np.asarray(f["pairwise.tables.0"]) != 0)       # the pairs were trained
    out = tmp_path / "test.json"
    assert main(["eval", "--run-dir", str(run_dir), "--split", "test", "--metrics-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_samples"] == 40 and 0 <= report["word_accuracy"] <= report["char_accuracy"] <= 1
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_debug_fault_step_fails_the_run_at_that_step_on_that_rank(small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DSTRAIN_FAULT_STEP", "1")           # the switch before the debug section

    def args(run_dir, *sets):
        return ["train", "--config", DEBUG, "--no-progress", "--run-dir", str(tmp_path / run_dir),
                "--set", f"data.path={small_data}", "train.variant=joint", "train.epochs=1",
                "train.max_steps=3", *sets]

    # one process: rank 1 never runs
    assert main(args("other-rank", "debug.fault_step=2", "debug.fault_rank=1")) == 0
    with pytest.raises(RuntimeError, match=r"injected fault at step 2 \(debug.fault_step\)"):
        main(args("run", "debug.fault_step=2"))
    rows = (tmp_path / "other-rank" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 3


def _broken_file(path):
    with h5py.File(path, "w") as f:
        f.attrs["task"], f.attrs["num_classes"] = "words", 26
        f.create_dataset("train/x", data=np.zeros((4, 5, 28), np.uint8))   # 3-D: not (N, L, H, W)
        f.create_dataset("train/y", data=np.zeros((4, 5), np.int64))
    return path


@pytest.mark.parametrize("case", ["missing data", "broken data", "unknown key", "bad set value",
                                  "missing config", "eval without run"])
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path):
    args = {
        "missing data": ["train", "--config", DEBUG, "--set", f"data.path={tmp_path / 'no.h5'}",
                         "data.generate=false"],
        "broken data": ["train", "--config", DEBUG, "--set",
                        f"data.path={_broken_file(tmp_path / 'bad.h5')}", "data.generate=false"],
        "unknown key": ["train", "--config", DEBUG, "--set", "train.lrr=0.1"],
        "bad set value": ["train", "--config", DEBUG, "--set", "train.lr=fast"],
        "missing config": ["train", "--config", str(tmp_path / "none.yaml")],
        "eval without run": ["eval", "--run-dir", str(tmp_path / "nothing")],
    }[case]
    expected = {"missing data": "dstrain data words", "broken data": "train/x",
                "unknown key": "train.lrr", "bad set value": "train.lr",
                "missing config": "none.yaml", "eval without run": "config.yaml"}[case]
    result = dstrain(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dstrain: error:") and expected in lines[0]


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2


def _other_words_file(path, rng):
    """A file of the contract that the generator does not make: 16x8 images, 10 classes,
    words of 2..7 letters padded with -1, float32 images."""
    with h5py.File(path, "w") as f:
        f.attrs["task"], f.attrs["num_classes"] = "words", 10
        for split, n in (("train", 60), ("val", 20), ("test", 20)):
            lengths = rng.integers(2, 8, n)
            y = np.where(np.arange(7) < lengths[:, None], rng.integers(0, 10, (n, 7)), -1)
            x = rng.random((n, 7, 16, 8)).astype(np.float32) * (y >= 0)[:, :, None, None]
            x[y >= 0] += np.eye(16, 8, dtype=np.float32)[None] * (y[y >= 0] / 10.0)[:, None, None]
            f.create_dataset(f"{split}/x", data=x)
            f.create_dataset(f"{split}/y", data=y)
    return path


@pytest.mark.parametrize("unary, pairwise_shared", [("cnn", "true"), ("mlp", "false")])
def test_training_reads_any_file_of_the_contract(tmp_path, unary, pairwise_shared):
    data = _other_words_file(tmp_path / "other.h5", np.random.default_rng(3))
    run_dir = tmp_path / "run"
    assert main(["train", "--config", DEBUG, "--run-dir", str(run_dir), "--no-progress", "--set",
                 f"data.path={data}", "data.generate=false", f"model.unary={unary}",
                 f"model.pairwise_shared={pairwise_shared}", "train.epochs=2",
                 "train.pretrain_epochs=1", "train.batch_size=16"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(run_dir), "--metrics-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_samples"] == 20 and 0 <= report["char_accuracy"] <= 1
