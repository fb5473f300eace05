"""The paper's image-tagging table, reproduced in kind on the generated Flickr-like data.

    python bench/tagging_table.py            # tagging_debug.yaml -> bench/results/tagging_table.md
    python bench/tagging_table.py --config configs/tagging.yaml \
        --out bench/results/tagging_table_paper.md
    python bench/tagging_table.py --out -    # print only

Trains unary only, piecewise and joint with pretraining (each with pair tables and with a
pairwise net) from the same config (only train.variant and the model.pairwise keys change, so
every row trains train.epochs epochs; pretrain_joint's first train.pretrain_epochs are
unary-only) and prints the test Hamming error beside the paper's (Chen et al. 2015, Flickr, 38
tags).
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
from dstrain.learning.params import load_params  # noqa: E402
from dstrain.learning.structured import InferenceOptions  # noqa: E402
from dstrain.learning.trainer import build_model, evaluate, train  # noqa: E402
from dstrain.tasks import get_task  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)

ROOT = Path(__file__).resolve().parents[1]
# row: (label, the paper's error, overrides).  Piecewise trains each region as its own classifier;
# a 2x2 table shared by all images then only learns its pair's frequencies, and summed over the
# 37 partners of a tag those swamp the image's evidence (the row "piecewise, pair tables" measures
# it), so the piecewise row gives each pair a classifier of the image (the pairwise net), fitted
# alone (model.pair_scale=1: no division by the 37 partners a joint step moves together).  The
# joint rows differ only in the pairwise term.
ROWS = {"unary": ("Unary only", 9.36, ["train.variant=unary"]),
        "piecewise_tables": ("Piecewise, pair tables", None, ["train.variant=piecewise",
                                                               "model.pairwise=table"]),
        "piecewise": ("Piecewise, pairwise net", 7.70,
                      ["train.variant=piecewise", "model.pairwise=net", "model.pair_scale=1"]),
        "joint_tables": ("Joint (pretrained unary), pair tables", None,
                         ["train.variant=pretrain_joint", "model.pairwise=table"]),
        "pretrain_joint": ("Joint (pretrained unary), pairwise net", 7.25,
                           ["train.variant=pretrain_joint", "model.pairwise=net"])}


def run_row(variant: str, config_path, overrides, work: Path):
    config = load_config(config_path, [*overrides, *ROWS[variant][2]])
    started = time.perf_counter()
    train(config, run_dir=work / variant, progress=False, log=lambda line: print(f"[{variant}] {line}"))
    seconds = time.perf_counter() - started
    with get_task(config.task).open(config.data.path, "test") as split:
        x, y = split.read(np.arange(split.num_samples))
        model = build_model(config, split)
    load_params(model, work / variant / "params.h5")
    model.eval()
    test = evaluate(model, x, y, InferenceOptions.from_config(config.inference))
    return test, seconds, config, y.size   # y.size: the tag decisions scored


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tagging_debug.yaml"))
    parser.add_argument("--set", nargs="+", default=[], help="extra config overrides")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tagging_table.md"))
    args = parser.parse_args(argv)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, (label, paper, _) in ROWS.items():
            test, seconds, config, decisions = run_row(variant, args.config, args.set, Path(tmp))
            results[variant] = test
            paper = "" if paper is None else f"{paper:.2f}"
            rows.append(f"| {label} | {100 * test['hamming_error']:.2f} | {paper} | "
                        f"{100 * test['mean_ap']:.1f} | {100 * test['example_f1']:.1f} | "
                        f"{seconds / 60:.1f} min |")
            print(rows[-1], flush=True)
    d = config.data
    lines = ["# The paper's image-tagging table, in kind (`bench/tagging_table.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}: `{Path(args.config).name}` "
             f"{' '.join('--set ' + s for s in args.set)}, generated data ({d.num_train} / "
             f"{d.num_val} / {d.num_test} images, seed {d.seed}), test split; "
             f"{config.train.epochs} epochs per row. Paper: Chen et al., ICML 2015, Flickr, "
             "38 tags, their CNN.", "",
             "| model | ours: Hamming error (%) | paper: prediction error (%) | ours: mAP (%) | "
             "ours: example F1 (%) | train time |", "|---|---|---|---|---|---|", *rows]
    error = {variant: result["hamming_error"] for variant, result in results.items()}
    relative = {variant: 100 * (e - error["unary"]) / error["unary"] for variant, e in error.items()}
    lines += ["", f"Against unary only: joint {relative['pretrain_joint']:+.1f} % (with pair "
                  f"tables {relative['joint_tables']:+.1f} %), piecewise "
                  f"{relative['piecewise']:+.1f} % relative (the paper: joint "
                  f"{100 * (7.25 - 9.36) / 9.36:+.1f} %, piecewise {100 * (7.70 - 9.36) / 9.36:+.1f} %). "
                  f"Ordering joint < piecewise < unary only: "
                  f"{'holds' if error['pretrain_joint'] < error['piecewise'] < error['unary'] else 'does not hold'}."]
    # two standard errors of the difference of two error rates over the same number of decisions
    noise = 2 * np.sqrt(2 * error["unary"] * (1 - error["unary"]) / decisions)
    lines += [f"Differences under {100 * noise:.2f} points (two standard errors of a difference over "
              f"{decisions} tag decisions) are ties: joint "
              f"{100 * (error['unary'] - error['pretrain_joint']):.2f}, "
              f"piecewise {100 * (error['unary'] - error['piecewise']):.2f} points below unary only."]
    write_report(lines + [""], args.out)


if __name__ == "__main__":
    main()
