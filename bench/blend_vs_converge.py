"""Wall time of `blend` (messages kept per sample, 1 sweep per step) against `converge` (messages
reset per batch, BP run to a tolerance) to reach the same validation word accuracy.

    python bench/blend_vs_converge.py                       # writes bench/results/blend_vs_converge.md
    python bench/blend_vs_converge.py --set train.epochs=4  # quicker

Same data, model, seed and optimiser; only inference.algorithm differs.  Training time is summed
per epoch from each run's metrics.jsonl (evaluation, identical for both, is not counted).  The
target of issue #3: blend reaches converge's final validation word accuracy at least 3x sooner.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.config import load_config  # noqa: E402
from dstrain.learning.trainer import train  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "words_debug.yaml"
BASE = ["train.variant=joint", "train.epochs=10",
        "inference.max_sweeps=100", "inference.tol=1.0e-4"]


def run(algorithm: str, overrides, work: Path):
    config = load_config(CONFIG, BASE + list(overrides) + [f"inference.algorithm={algorithm}"])
    train(config, run_dir=work / algorithm, progress=False, log=lambda line: print(f"[{algorithm}] {line}"))
    rows = [json.loads(line) for line in (work / algorithm / "metrics.jsonl").read_text().splitlines()]
    elapsed, curve = 0.0, []
    for row in rows:
        elapsed += row["seconds"]
        curve.append((elapsed, row["val_word_accuracy"]))
    return config, curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", nargs="+", default=[], help="extra config overrides for both runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "blend_vs_converge.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config, converge = run("converge", args.set, Path(tmp))
        _, blend = run("blend", args.set, Path(tmp))
    target = converge[-1][1]
    reached = next((t for t, acc in blend if acc >= target), None)
    ratio = converge[-1][0] / reached if reached else 0.0
    lines = [
        "# blend vs converge (`bench/blend_vs_converge.py`)", "",
        f"Measured {time.strftime('%Y-%m-%d')}; config `configs/words_debug.yaml` with "
        f"`{' '.join(BASE + list(args.set))}`; training seconds only.", "",
        "| epoch | converge: train s, val word acc | blend: train s, val word acc |", "|---|---|---|"]
    for k, (c, b) in enumerate(zip(converge, blend), start=1):
        lines.append(f"| {k} | {c[0]:.1f} s, {100 * c[1]:.1f} % | {b[0]:.1f} s, {100 * b[1]:.1f} % |")
    verdict = (f"converge ends at {100 * target:.1f} % word accuracy after {converge[-1][0]:.1f} s; "
               + (f"blend reaches it after {reached:.1f} s: **{ratio:.1f}x sooner**." if reached
                  else "blend never reaches it in this run."))
    lines += ["", verdict, ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
