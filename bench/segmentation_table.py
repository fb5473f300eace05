"""The paper's segmentation table, in kind: unary only against joint training with the dense CRF
and with the grid CRF, on the generated scenes.

    python bench/segmentation_table.py                   # writes bench/results/segmentation_table.md
    python bench/segmentation_table.py --set data.num_train=600 train.epochs=6 --out -

Every row trains train.epochs epochs from the same data and unary net settings (the CRF rows'
first train.pretrain_epochs are unary-only) and is scored on the test split.  The slides' PASCAL
VOC numbers stand beside them: unary only 61.5 %, joint 64.1 % mean IoU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_report  # noqa: E402  (bench/report.py)
from tagging_table import run_row  # noqa: E402  (the same train-then-test step)

ROOT = Path(__file__).resolve().parents[1]
ROWS = {   # name: (label, config, variant, the slides' mean IoU)
    "unary": ("Unary only", "segmentation.yaml", "unary", 61.5),
    "dense": ("Joint, dense CRF (mean-field)", "segmentation.yaml", "pretrain_joint", 64.1),
    "grid": ("Joint, grid CRF (convex BP, blend)", "segmentation_grid.yaml", "pretrain_joint", None),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", nargs="+", default=[], help="config overrides for every row")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "segmentation_table.md"))
    args = parser.parse_args(argv)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (label, config, variant, paper) in ROWS.items():
            test, seconds, loaded = run_row(variant, ROOT / "configs" / config, args.set,
                                            Path(tmp) / name)
            results[name] = test
            rows.append(f"| {label} | {100 * test['mean_iou']:.1f} | "
                        f"{100 * test['pixel_accuracy']:.1f} | "
                        f"{'-' if paper is None else f'{paper:.1f}'} | {seconds / 60:.1f} min |")
            print(rows[-1], flush=True)
    d = loaded.data
    lines = ["# The paper's segmentation table, in kind (`bench/segmentation_table.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}: configs/segmentation.yaml and "
             f"segmentation_grid.yaml {' '.join('--set ' + s for s in args.set)}; generated "
             f"scenes ({d.num_train} / {d.num_val} / {d.num_test} images, seed {d.seed}), test "
             f"split; {loaded.train.epochs} epochs per row. Slides: PASCAL VOC, their CNN.", "",
             "| model | ours: mean IoU (%) | ours: pixel accuracy (%) | slides: mean IoU (%) | "
             "train time |", "|---|---|---|---|---|", *rows, ""]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
