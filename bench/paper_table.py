"""The paper's word-recognition table, reproduced in kind on the generated data.

    python bench/paper_table.py                        # all rows, writes bench/results/paper_table.md
    python bench/paper_table.py --epochs 5 --rows unary joint1

Trains unary-only, piecewise (PwTrain), joint and pretrain-joint models with first- and
second-order pairwise tables (one 1-layer MLP size) on data/words.h5 (generated if missing: 10k /
2k / 2k words) and prints test word / character accuracy beside the paper's numbers for the same
MLP size (Chen et al. 2015, table of the word-recognition experiment, 1-layer MLP).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.config import load_config  # noqa: E402
from dstrain.tasks.words import open_words  # noqa: E402
from dstrain.learning.params import load_params  # noqa: E402
from dstrain.learning.structured import InferenceOptions  # noqa: E402
from dstrain.learning.trainer import build_model, evaluate, train  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "words.yaml"
ROWS = {   # name: (label, order, variant)
    "unary": ("Unary only", 0, "unary"),
    "pw1": ("PwTrain, 1st order", 1, "piecewise"),
    "joint1": ("JointTrain, 1st order", 1, "joint"),
    "pretrain1": ("PreTrainJoint, 1st order", 1, "pretrain_joint"),
    "pw2": ("PwTrain, 2nd order", 2, "piecewise"),
    "joint2": ("JointTrain, 2nd order", 2, "joint"),
    "pretrain2": ("PreTrainJoint, 2nd order", 2, "pretrain_joint"),
}
# the paper's word / char test accuracy (%) for 1-layer MLPs of these sizes
PAPER = {
    128: {"unary": (8.60, 61.32), "joint1": (16.80, 65.28), "pw1": (12.70, 64.35),
          "pretrain1": (20.65, 67.42), "joint2": (25.50, 67.13), "pw2": (10.05, 58.90),
          "pretrain2": (28.15, 69.07)},
    512: {"unary": (12.50, 65.69), "joint1": (31.80, 74.90), "pw1": (22.80, 71.29),
          "pretrain1": (31.70, 75.56), "joint2": (45.55, 79.60), "pw2": (18.10, 67.31),
          "pretrain2": (45.75, 80.09)},
}


def run_row(name, hidden, epochs, extra, work: Path):
    label, order, variant = ROWS[name]
    overrides = [f"model.hidden=[{hidden}]", f"model.order={order}",
                 f"train.variant={variant}", f"train.epochs={epochs}",
                 f"train.pretrain_epochs={max(1, epochs // 3)}", *extra]
    config = load_config(CONFIG, overrides)
    started = time.perf_counter()
    train(config, run_dir=work / name, progress=False, log=lambda line: print(f"[{name}] {line}"))
    seconds = time.perf_counter() - started
    with open_words(config.data.path, "test") as split:
        images, labels = split.read(np.arange(split.num_samples))
        model = build_model(config, split)
    load_params(model, work / name / "params.h5")
    model.eval()
    test = evaluate(model, images, labels, InferenceOptions.from_config(config.inference))
    return label, test, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512, choices=sorted(PAPER))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--set", nargs="+", default=[], help="extra config overrides")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "paper_table.md"))
    args = parser.parse_args(argv)
    lines = ["# The paper's word-recognition table, in kind (`bench/paper_table.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}: 1-layer MLP, H1 = {args.hidden}, "
             f"{args.epochs} epochs, config `configs/words.yaml` "
             f"{' '.join('--set ' + s for s in args.set)}; test split of the generated data "
             "(10k / 2k / 2k words). Paper: Chen et al., ICML 2015, same MLP size, their data.", "",
             "| model | ours: word / char acc (%) | paper: word / char acc (%) | train time |",
             "|---|---|---|---|"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            label, test, seconds = run_row(name, args.hidden, args.epochs, args.set, Path(tmp))
            results[name] = test
            paper = PAPER[args.hidden][name]
            lines.append(f"| {label} | {100 * test['word_accuracy']:.2f} / "
                         f"{100 * test['char_accuracy']:.2f} | {paper[0]:.2f} / {paper[1]:.2f} | "
                         f"{seconds / 60:.1f} min |")
            print(lines[-1], flush=True)
    if {"unary", "joint1"} <= set(results):
        gain = 100 * (results["joint1"]["word_accuracy"] - results["unary"]["word_accuracy"])
        lines += ["", f"Joint 1st order beats unary-only by {gain:.1f} word-accuracy points."]
    if {"joint1", "joint2"} <= set(results):
        gain = 100 * (results["joint2"]["word_accuracy"] - results["joint1"]["word_accuracy"])
        lines += [f"Joint 2nd order against 1st order: {gain:+.1f} points."]
    write_report(lines + [""], args.out)


if __name__ == "__main__":
    main()
