"""Bad input, as a user meets it on the command line: each case ends with one line on stderr that
names the file or key and what was expected, exit code 2, no traceback, and no existing file is
changed.  The cases call the console entry point (`dstrain.cli.main`) in this process, with
stdout and stderr captured at the file descriptors (C libraries' messages included); the
installed command around it is checked in a subprocess in tests/test_cli.py."""
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from dstrain.cli import main
from dstrain.tasks.words import generate_words

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs" / "words_debug.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A good data file, a finished run with a checkpoint, and broken variants to point at."""
    base = tmp_path_factory.mktemp("bad")
    good = base / "good.h5"
    generate_words(good, num_train=30, num_val=10, num_test=10, seed=3, progress=False)
    run = base / "run"
    assert main(["train", "--no-progress", "--config", DEBUG, "--run-dir", str(run), "--set",
                 f"data.path={good}", "data.generate=false", "train.epochs=2",
                 "train.pretrain_epochs=1", "model.hidden=[8]", "run.checkpoint_every=1"]) == 0

    def variant(name, edit):
        path = base / name
        path.write_bytes(good.read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def replace(f, name, data):
        del f[name]
        f.create_dataset(name, data=data)

    files = {
        "good": good, "run": run, "checkpoint": sorted((run / "checkpoints").glob("*.h5"))[-1],
        "truncated": base / "truncated.h5", "text": base / "notes.h5",
        "x3d": variant("x3d.h5", lambda f: replace(f, "train/x", np.zeros((30, 5, 28), np.uint8))),
        "xint": variant("xint.h5", lambda f: replace(f, "train/x", np.zeros((30, 5, 28, 28), np.int32))),
        "labels": variant("labels.h5", lambda f: replace(f, "train/y", np.full((30, 5), 30))),
        "notask": variant("notask.h5", lambda f: f.attrs.__delitem__("task")),
        "noval": variant("noval.h5", lambda f: f.__delitem__("val")),
        "badyaml": base / "bad.yaml", "file": base / "a-file",
        "notckpt": variant("notckpt.h5", lambda f: None),
    }
    tagging = base / "tagging.h5"
    with h5py.File(tagging, "w") as f:   # a good feature-vector tagging file, and variants of it
        f.attrs.update(task="tagging", num_labels=4)
        for split in ("train", "val", "test"):
            f[f"{split}/x"] = np.zeros((12, 6), np.float32)
            f[f"{split}/y"] = np.zeros((12, 4), np.uint8)

    def tagging_variant(name, edit):
        path = base / name
        path.write_bytes(tagging.read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    segmentation = base / "segmentation.h5"
    with h5py.File(segmentation, "w") as f:   # a good 6 x 5 segmentation file, and variants of it
        f.attrs.update(task="segmentation", num_classes=3)
        for split in ("train", "val", "test"):
            f[f"{split}/x"] = np.zeros((4, 3, 6, 5), np.uint8)
            f[f"{split}/y"] = np.zeros((4, 6, 5), np.int16)

    def segmentation_variant(name, edit):
        path = base / name
        path.write_bytes(segmentation.read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    files.update({
        "seg_labels": segmentation_variant("seg_labels.h5", lambda f: replace(
            f, "train/y", np.full((4, 6, 5), 3, np.int16))),
        "seg_yshape": segmentation_variant("seg_yshape.h5", lambda f: replace(
            f, "train/y", np.zeros((4, 6, 4), np.int16))),
        "seg_x3d": segmentation_variant("seg_x3d.h5", lambda f: replace(
            f, "train/x", np.zeros((4, 6, 5), np.uint8))),
    })
    files.update({
        "tag_labels": tagging_variant("tag_labels.h5", lambda f: replace(f, "train/y", np.full((12, 4), 2))),
        "tag_k": tagging_variant("tag_k.h5", lambda f: replace(f, "train/y", np.zeros((12, 5), np.uint8))),
        "tag_x3d": tagging_variant("tag_x3d.h5", lambda f: replace(f, "train/x", np.zeros((12, 6, 2), np.float32))),
        "tag_noval": tagging_variant("tag_noval.h5", lambda f: f.__delitem__("val")),
    })
    files["truncated"].write_bytes(good.read_bytes()[:2000])
    files["text"].write_text("not HDF5\n")
    files["badyaml"].write_text("train: {lr: [0.1\n")
    files["file"].write_text("a file, not a folder\n")
    return files


def data_args(path, config=DEBUG):
    return ["train", "--config", config, "--no-progress", "--set", f"data.path={path}",
            "data.generate=false"]


def tagging_args(path):
    return data_args(path, str(ROOT / "configs" / "tagging_debug.yaml"))


def segmentation_args(path):
    return data_args(path, str(ROOT / "configs" / "segmentation_debug.yaml"))


CASES = {   # name: (arguments from the world, fragment the one-line message must contain)
    "missing data file": (lambda w: data_args(w["good"].with_name("absent.h5")), "dstrain data words"),
    "truncated data file": (lambda w: data_args(w["truncated"]), "truncated.h5"),
    "not an HDF5 file": (lambda w: data_args(w["text"]), "notes.h5"),
    "x of the wrong rank": (lambda w: data_args(w["x3d"]), "train/x"),
    "x of the wrong dtype": (lambda w: data_args(w["xint"]), "uint8"),
    "labels out of range": (lambda w: data_args(w["labels"]), "train/y"),
    "no task attribute": (lambda w: data_args(w["notask"]), "task"),
    "no validation split": (lambda w: data_args(w["noval"]), "val"),
    "tagging labels not in {0, 1}": (lambda w: tagging_args(w["tag_labels"]), "train/y"),
    "tagging K not num_labels": (lambda w: tagging_args(w["tag_k"]), "num_labels"),
    "tagging x of the wrong rank": (lambda w: tagging_args(w["tag_x3d"]), "train/x"),
    "tagging without a validation split": (lambda w: tagging_args(w["tag_noval"]), "val"),
    "segmentation labels beyond num_classes": (lambda w: segmentation_args(w["seg_labels"]), "train/y"),
    "segmentation y of the wrong shape": (lambda w: segmentation_args(w["seg_yshape"]), "train/y"),
    "segmentation x not 4-D": (lambda w: segmentation_args(w["seg_x3d"]), "train/x"),
    "unknown config key": (lambda w: ["train", "--config", DEBUG, "--set", "train.lrr=0.1"], "train.lrr"),
    "bad --set value": (lambda w: ["train", "--config", DEBUG, "--set", "train.lr=fast"], "train.lr"),
    "--set without =": (lambda w: ["train", "--config", DEBUG, "--set", "train.lr"], "train.lr"),
    "bad choice": (lambda w: ["train", "--config", DEBUG, "--set", "inference.algorithm=bp"],
                   "inference.algorithm"),
    "exact on a 2nd-order chain": (lambda w: data_args(w["good"]) + ["inference.algorithm=exact"],
                                   "first-order"),
    "missing config": (lambda w: ["train", "--config", str(w["file"].with_name("none.yaml"))],
                       "none.yaml"),
    "invalid YAML": (lambda w: ["train", "--config", str(w["badyaml"])], "bad.yaml"),
    "checkpoint of another model": (lambda w: data_args(w["good"]) + [
        "model.hidden=[32]", "--run-dir", str(w["file"].with_name("other")),
        "--resume", str(w["checkpoint"])], "checkpoint"),
    "file that is no checkpoint": (lambda w: data_args(w["good"]) + [
        "model.hidden=[8]", "--run-dir", str(w["file"].with_name("other2")),
        "--resume", str(w["notckpt"])], "not a dstrain checkpoint"),
    "resume auto without checkpoints": (lambda w: data_args(w["good"]) + [
        "--run-dir", str(w["file"].with_name("empty")), "--resume", "auto"], "no complete checkpoint"),
    "unwritable run directory": (lambda w: data_args(w["good"]) + [
        "--run-dir", str(w["file"] / "run")], "a-file"),
    "eval of a folder that is no run": (lambda w: ["eval", "--run-dir", str(w["file"].parent)],
                                        "config.yaml"),
    "eval on a broken data file": (lambda w: ["eval", "--run-dir", str(w["run"]), "--data",
                                              str(w["truncated"])], "truncated.h5"),
    "data generation into a file": (lambda w: ["data", "words", "--out", str(w["file"] / "x.h5"),
                                               "--train", "5", "--val", "2", "--test", "2"], "a-file"),
}


def digests(world):
    return {name: hashlib.sha256(p.read_bytes()).hexdigest()
            for name, p in world.items() if isinstance(p, Path) and p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_and_exit_code_2(case, world, capfd, monkeypatch, tmp_path):
    arguments, fragment = CASES[case]
    monkeypatch.chdir(tmp_path)          # a relative default (run.dir, data.path) lands here
    before = digests(world)
    capfd.readouterr()
    code = main(arguments(world))
    stderr = capfd.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("dstrain: error:"), stderr
    assert fragment in lines[0], lines[0]
    assert digests(world) == before, "an existing file was changed"
