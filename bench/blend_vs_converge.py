"""Wall time of `blend` (messages kept per sample, k sweeps per step) against `converge` (messages
reset per batch, BP run to a tolerance) to reach the same validation word accuracy.

    python bench/blend_vs_converge.py                   # writes bench/results/blend_vs_converge.md
    python bench/blend_vs_converge.py --epochs 4 --tols 1e-4

Same data, model, seeds and optimiser (`configs/words_debug.yaml`, joint 2nd order from scratch);
only the inference algorithm differs; each curve is the mean over --seeds runs, run seed by seed
with every configuration in turn.  converge trains --epochs epochs; blend may take up to twice as
many to reach converge's final validation word accuracy.  Training time is summed per epoch
from each run's metrics.jsonl (evaluation, identical for both, is not counted).  The target of
issue #3: blend reaches converge's final validation word accuracy at least 3x sooner.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.config import load_config  # noqa: E402
from dstrain.data import open_words  # noqa: E402
from dstrain.learning.params import load_params  # noqa: E402
from dstrain.learning.structured import InferenceOptions, batch_loss  # noqa: E402
from dstrain.learning.trainer import build_model, train  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "words_debug.yaml"


def train_curve(tag: str, overrides, work: Path, seed: int):
    """(training seconds so far, validation word accuracy, sweeps per step) after each epoch."""
    config = load_config(CONFIG, ["train.variant=joint", *overrides, f"run.seed={seed}"])
    train(config, run_dir=work / tag, progress=False, log=lambda line: print(f"[{tag}] {line}"))
    rows = [json.loads(line) for line in (work / tag / "metrics.jsonl").read_text().splitlines()]
    elapsed, curve = 0.0, []
    for row in rows:
        elapsed += row["seconds"]
        curve.append((elapsed, row["val_word_accuracy"], row["sweeps_per_step"]))
    return curve


def mean_curve(curves):
    """Epoch by epoch mean over seeds (a 500-word validation set moves by a few points from epoch
    to epoch; the mean of a few seeds is a steadier curve to compare)."""
    return [tuple(sum(c[k][j] for c in curves) / len(curves) for j in range(3))
            for k in range(min(len(c) for c in curves))]


def reached_at(blend, converge):
    """Training seconds after which the blend curve first reaches converge's final accuracy."""
    return next((t for t, acc, _ in blend if acc >= converge[-1][1]), None)


def compare(blend, sweeps: int, converge, tol: float) -> list[str]:
    target = converge[-1][1]
    reached = reached_at(blend, converge)
    lines = [f"## converge to tol = {tol:g} against blend ({sweeps} sweep{'s' * (sweeps > 1)} per step)",
             "", "| epoch | converge: train s, sweeps/step, val word acc | blend: train s, val word acc |",
             "|---|---|---|"]
    for k in range(len(blend)):
        left = (f"{converge[k][0]:.1f} s, {converge[k][2]:.1f}, {100 * converge[k][1]:.1f} %"
                if k < len(converge) else "")
        lines.append(f"| {k + 1} | {left} | {blend[k][0]:.1f} s, {100 * blend[k][1]:.1f} % |")
    verdict = (f"converge ends at {100 * target:.1f} % validation word accuracy after "
               f"{converge[-1][0]:.1f} s of training; ")
    verdict += (f"blend reaches it after {reached:.1f} s: **{converge[-1][0] / reached:.1f}x sooner**."
                if reached else f"blend does not reach it within {len(blend)} epochs "
                                f"({blend[-1][0]:.1f} s).")
    return lines + ["", verdict, ""]


def gradient_error_by_tol(run_dir: Path, overrides, tols, words: int = 500) -> list[str]:
    """How far converge's gradient at each tolerance is from the converged one (tol 1e-10), on
    the final parameters of a converge run and its first `words` training words."""
    config = load_config(CONFIG, ["train.variant=joint", *overrides])
    with open_words(config.data.path, "train") as split:
        words = min(words, split.num_samples)
        images, labels, lengths = split.read(np.arange(words))
        model = build_model(config, split).double()
    load_params(model, run_dir / "params.h5")
    gradients = {}
    for tol in [*tols, 1e-10]:
        options = InferenceOptions(algorithm="converge", tol=tol, max_sweeps=100_000)
        parts, sweeps = [], 0
        for start in range(0, words, config.train.batch_size):
            rows = slice(start, start + config.train.batch_size)
            _, _, result = batch_loss(model, images[rows].astype(np.float64), labels[rows],
                                      lengths[rows], model.order, options)
            parts.append(result.source_gradient)
            sweeps += result.sweeps
        gradients[tol] = (np.concatenate(parts), sweeps / len(parts))
    exact = gradients.pop(1e-10)[0]
    lines = [f"How converged converge's gradient is, by tolerance: the final parameters of "
             f"`{run_dir.name}`, its first {words} training words in steps of "
             f"{config.train.batch_size}, against tol 1e-10:", "",
             "| converge tol | sweeps per step | relative L2 error of the gradient |", "|---|---|---|"]
    lines += [f"| {tol:g} | {sweeps:.1f} | {np.linalg.norm(g - exact) / np.linalg.norm(exact):.1e} |"
              for tol, (g, sweeps) in gradients.items()]
    return lines + [""]


def steps_per_epoch(overrides) -> int:
    config = load_config(CONFIG, list(overrides))
    return -(-config.data.num_train // config.train.batch_size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="converge's epochs (blend: up to 2x)")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-6])
    parser.add_argument("--sweeps", type=int, nargs="+", default=[1, 2],
                        help="blend's sweeps per step (inference.sweeps), one blend curve each")
    parser.add_argument("--set", nargs="+", default=[], help="extra config overrides for all runs")
    parser.add_argument("--seeds", type=int, default=5, help="runs (seeds 0, 1, ...) averaged per curve")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "blend_vs_converge.md"))
    args = parser.parse_args(argv)
    lines = ["# blend vs converge (`bench/blend_vs_converge.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `configs/words_debug.yaml` "
             f"(`train.variant=joint {' '.join(args.set)}`); training seconds only, one process; "
             f"every curve is the mean of {args.seeds} runs (run.seed = 0..{args.seeds - 1}).", ""]
    runs = {("blend", k): [f"train.epochs={2 * args.epochs}", "inference.algorithm=blend",
                           f"inference.sweeps={k}"] for k in args.sweeps}
    runs.update({("converge", tol): [f"train.epochs={args.epochs}", "inference.algorithm=converge",
                                     f"inference.tol={tol}"] for tol in args.tols})
    curves = {key: [] for key in runs}
    with tempfile.TemporaryDirectory() as tmp:
        # seed by seed, every configuration in turn: a slow spell of this shared machine then
        # lands on blend and converge alike instead of on whichever ran during it
        for seed in range(args.seeds):
            for (name, value), overrides in runs.items():
                curves[name, value].append(train_curve(f"{name}-{value:g}-seed{seed}",
                                                       [*overrides, *args.set], Path(tmp), seed))
        accuracy_of_tol = gradient_error_by_tol(Path(tmp) / f"converge-{args.tols[0]:g}-seed0",
                                                args.set, [1e-2, 1e-3, *args.tols])
    means = {key: mean_curve(runs_of_key) for key, runs_of_key in curves.items()}
    blends = {k: means["blend", k] for k in args.sweeps}
    converges = {tol: means["converge", tol] for tol in args.tols}
    per_epoch = steps_per_epoch(args.set)
    lines += ["Training milliseconds per step (mean over all epochs of each run):", "",
              "| run | ms per step |", "|---|---|"]
    lines += [f"| {name} {'sweeps' if name == 'blend' else 'tol'} {value:g} | "
              f"{1e3 * curve[-1][0] / len(curve) / per_epoch:.1f} |"
              for (name, value), curve in means.items()]
    lines += ["", "How much sooner blend reaches converge's final validation word accuracy:", "",
              "| blend sweeps per step | " + " | ".join(f"converge tol {tol:g}" for tol in args.tols)
              + " |", "|---" * (len(args.tols) + 1) + "|"]
    for k, blend in blends.items():
        cells = []
        for converge in converges.values():
            reached = reached_at(blend, converge)
            cells.append(f"{converge[-1][0] / reached:.1f}x" if reached else "not reached")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += accuracy_of_tol
    for k, blend in blends.items():
        for tol, converge in converges.items():
            lines += compare(blend, k, converge, tol)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
