"""Wall time of `blend` (messages kept per sample, k sweeps per step) against `converge` (messages
reset per batch, BP run to a tolerance) to reach the same validation score.

    python bench/blend_vs_converge.py                   # writes bench/results/blend_vs_converge.md
    python bench/blend_vs_converge.py --seeds 1 --tols 1e-4 --sweeps 1 --out -
    python bench/blend_vs_converge.py --set train.variant=joint --epochs 10   # from scratch, short
    python bench/blend_vs_converge.py --config configs/tagging_debug.yaml \
        --out bench/results/blend_vs_converge_tagging.md      # any task: its headline metric

The run is `--config` (default `configs/words_debug.yaml`) as shipped (pretrain_joint: unary
epochs, then joint ones); only the inference algorithm differs.  The score is the task's
headline validation metric (words: word accuracy; tagging: Hamming error, lower is better;
segmentation: mean IoU), or `--metric NAME [--lower-is-better]`.  converge trains the
config's epochs; blend trains the same plus as many joint epochs again, and the bench finds when
blend first reaches the validation score converge ends at.  Each curve is the mean over --seeds
runs, run seed by seed with every configuration in turn.  Training time is summed per epoch from
each run's metrics.jsonl, the unary epochs (the same work for both) included and evaluation (the
same for both) not.  Because a converge run of n epochs is the first n epochs of a longer one (the
learning-rate plateau only looks back), the bench also reports the speed-up against converge runs
of a half and a quarter of the joint epochs.  The project's target: blend reaches converge's final
score at least 3x sooner.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.config import ConfigError, load_config  # noqa: E402
from dstrain.tasks import get_task  # noqa: E402
from dstrain.learning.params import load_params  # noqa: E402
from dstrain.learning.structured import InferenceOptions, structured_loss  # noqa: E402
from dstrain.models import Batch  # noqa: E402
from dstrain.learning.trainer import build_model, train  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "words_debug.yaml"
# each task's headline validation metric: (metrics.jsonl key without "val_", higher is better)
HEADLINE = {"words": ("word_accuracy", True), "tagging": ("hamming_error", False),
            "segmentation": ("mean_iou", True)}


@dataclass(frozen=True)
class Score:
    """What the runs are compared by: the config they train and its validation metric."""
    config: Path
    metric: str
    higher: bool   # higher is better


def train_curve(score: Score, tag: str, overrides, work: Path, seed: int):
    """(training seconds so far, validation score, sweeps per step) after each epoch, and the
    run's training milliseconds per step."""
    config = load_config(score.config, [*overrides, f"run.seed={seed}"])
    train(config, run_dir=work / tag, progress=False, log=lambda line: print(f"[{tag}] {line}"))
    rows = [json.loads(line) for line in (work / tag / "metrics.jsonl").read_text().splitlines()]
    elapsed, curve = 0.0, []
    for row in rows:
        elapsed += row["seconds"]
        curve.append((elapsed, row[f"val_{score.metric}"], row["sweeps_per_step"]))
    return curve, 1e3 * elapsed / rows[-1]["step"]


def mean_curve(curves):
    """Epoch by epoch mean over seeds (a 500-word validation set moves by a few points from epoch
    to epoch; the mean of a few seeds is a steadier curve to compare)."""
    return [tuple(sum(c[k][j] for c in curves) / len(curves) for j in range(3))
            for k in range(min(len(c) for c in curves))]


def speedup(blend, converge, epochs: int | None = None, higher: bool = True) -> float | None:
    """converge's training seconds over its first `epochs` epochs (all: None), divided by the
    seconds after which blend first reaches the validation score converge has then; None if
    blend never does."""
    seconds, target, _ = converge[(epochs or len(converge)) - 1]
    reached = next((t for t, value, _ in blend
                    if (value >= target if higher else value <= target)), None)
    return seconds / reached if reached else None


def times(ratio: float | None) -> str:
    return f"{ratio:.1f}x" if ratio else "not reached"


def compare(score: Score, blend, sweeps: int, converge, tol: float) -> list[str]:
    lines = [f"## converge to tol = {tol:g} against blend ({sweeps} sweep{'s' * (sweeps > 1)} per step)",
             "", f"| epoch | converge: train s, sweeps/step, val {score.metric} | "
             f"blend: train s, sweeps/step, val {score.metric} |", "|---|---|---|"]
    for k in range(len(blend)):
        left = (f"{converge[k][0]:.1f} s, {converge[k][2]:.1f}, {100 * converge[k][1]:.1f} %"
                if k < len(converge) else "")
        lines.append(f"| {k + 1} | {left} | {blend[k][0]:.1f} s, {blend[k][2]:.1f}, "
                     f"{100 * blend[k][1]:.1f} % |")
    ratio = speedup(blend, converge, higher=score.higher)
    verdict = (f"converge ends at {100 * converge[-1][1]:.2f} % validation {score.metric} after "
               f"{converge[-1][0]:.1f} s of training; ")
    verdict += (f"blend reaches it after {converge[-1][0] / ratio:.1f} s: **{ratio:.1f}x sooner**."
                if ratio else f"blend does not reach it within {len(blend)} epochs "
                              f"({blend[-1][0]:.1f} s).")
    return lines + ["", verdict, ""]


def gradient_error_by_tol(score: Score, run_dir: Path, overrides, tols,
                          words: int = 500) -> list[str]:
    """How far converge's gradient at each tolerance is from the converged one (tol 1e-10), on
    the final parameters of a converge run and its first `words` training samples."""
    config = load_config(score.config, list(overrides))
    with get_task(config.task).open(config.data.path, "train") as split:
        words = min(words, split.num_samples)
        images, labels = split.read(np.arange(words))
        model = build_model(config, split).double()
    load_params(model, run_dir / "params.h5")
    gradients = {}
    for tol in [*tols, 1e-10]:
        options = InferenceOptions.from_config(config.inference).but(
            algorithm="converge", tol=tol, max_sweeps=100_000)
        parts, sweeps = [], 0
        for start in range(0, words, config.train.batch_size):
            rows = slice(start, start + config.train.batch_size)
            batch = Batch(torch.from_numpy(images[rows].astype(np.float64)), labels[rows])
            result = structured_loss(model.potentials(batch), batch.y, options)
            parts.append(result.gradients[0])
            sweeps += result.sweeps
        gradients[tol] = (np.concatenate(parts), sweeps / len(parts))
    exact = gradients.pop(1e-10)[0]
    lines = [f"How converged converge's gradient is, by tolerance: the final parameters of "
             f"`{run_dir.name}`, its first {words} training samples in steps of "
             f"{config.train.batch_size}, against tol 1e-10:", "",
             "| converge tol | sweeps per step | relative L2 error of the gradient |", "|---|---|---|"]
    lines += [f"| {tol:g} | {sweeps:.1f} | {np.linalg.norm(g - exact) / np.linalg.norm(exact):.1e} |"
              for tol, (g, sweeps) in gradients.items()]
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(CONFIG), help="the training config (default: words)")
    parser.add_argument("--metric", help="validation metric to compare (default: the task's)")
    parser.add_argument("--lower-is-better", action="store_true", help="with --metric")
    parser.add_argument("--epochs", type=int, help="converge's epochs (default: the config's)")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-6])
    parser.add_argument("--sweeps", type=int, nargs="+", default=[1, 2],
                        help="blend's sweeps per step (inference.sweeps), one blend curve each")
    parser.add_argument("--set", nargs="+", default=[], help="extra config overrides for all runs")
    parser.add_argument("--gradient-samples", type=int, default=500,
                        help="training samples of the gradient-by-tolerance check (0: skip it; "
                             "its tol 1e-10 reference is slow where BP converges slowly)")
    parser.add_argument("--seeds", type=int, default=5, help="runs (seeds 0, 1, ...) averaged per curve")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "blend_vs_converge.md"))
    args = parser.parse_args(argv)
    base = [*args.set, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    try:
        config = load_config(args.config, base)
    except ConfigError as error:
        parser.error(str(error))
    score = Score(Path(args.config), *((args.metric, not args.lower_is_better) if args.metric
                                       else HEADLINE.get(config.task, HEADLINE["words"])))
    t = config.train
    unary_epochs = min(t.pretrain_epochs, t.epochs) if t.variant == "pretrain_joint" else 0
    joint_epochs = t.epochs - unary_epochs
    if joint_epochs < 1 or t.variant not in ("joint", "pretrain_joint"):
        parser.error("the runs need joint epochs: variant joint or pretrain_joint")
    runs = {("blend", k): [*base, f"train.epochs={t.epochs + joint_epochs}",
                           "inference.algorithm=blend", f"inference.sweeps={k}"] for k in args.sweeps}
    runs.update({("converge", tol): [*base, "inference.algorithm=converge", f"inference.tol={tol}"]
                 for tol in args.tols})
    curves, ms_per_step = {key: [] for key in runs}, {key: [] for key in runs}
    with tempfile.TemporaryDirectory() as tmp:
        # seed by seed, every configuration in turn: a slow spell of this shared machine then
        # lands on blend and converge alike instead of on whichever ran during it
        for seed in range(args.seeds):
            for (name, value), overrides in runs.items():
                curve, ms = train_curve(score, f"{name}-{value:g}-seed{seed}", overrides,
                                        Path(tmp), seed)
                curves[name, value].append(curve)
                ms_per_step[name, value].append(ms)
        converged_run = Path(tmp) / f"converge-{args.tols[0]:g}-seed0"
        accuracy_of_tol = gradient_error_by_tol(score, converged_run, base,
                                                [1e-2, 1e-3, *args.tols], args.gradient_samples) \
            if args.gradient_samples > 0 else []
    means = {key: mean_curve(runs_of_key) for key, runs_of_key in curves.items()}
    lines = ["# blend vs converge (`bench/blend_vs_converge.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()} with `{score.config.name}`"
             + (f" (`{' '.join(base)}`)" if base else " as shipped")
             + f": {t.variant}, {unary_epochs} unary and {joint_epochs} joint epochs for converge, "
             f"{joint_epochs} more joint epochs for blend; training seconds only (unary epochs "
             f"included), one process, {config.run.threads} torch thread(s); every curve is the "
             f"mean of {args.seeds} runs (run.seed = 0..{args.seeds - 1}).", "",
             "Training milliseconds per step (each run's training seconds over its steps, mean "
             "over seeds):", "",
             "| run | ms per step |", "|---|---|"]
    lines += [f"| {name} {'sweeps' if name == 'blend' else 'tol'} {value:g} | "
              f"{np.mean(ms):.1f} |" for (name, value), ms in ms_per_step.items()]
    spread_note = (f"; in brackets the lowest and highest of the {args.seeds} seeds' own curves"
                   if args.seeds > 1 else "")
    lines += ["", f"How much sooner blend reaches the validation {score.metric} converge ends at "
              f"(mean curves{spread_note}):", "",
              "| blend sweeps per step | " + " | ".join(f"converge tol {tol:g}" for tol in args.tols)
              + " |", "|---" * (len(args.tols) + 1) + "|"]
    for k in args.sweeps:
        cells = []
        for tol in args.tols:
            seeds = [speedup(b, c, higher=score.higher)
                     for b, c in zip(curves["blend", k], curves["converge", tol])]
            spread = (f" ({min(seeds):.1f}-{max(seeds):.1f}x)" if all(seeds) else
                      f" ({sum(not s for s in seeds)} seed(s) not reached)") if args.seeds > 1 else ""
            cells.append(times(speedup(means["blend", k], means["converge", tol],
                                         higher=score.higher)) + spread)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lengths = sorted({max(1, round(joint_epochs * f)) for f in (0.25, 0.5, 1.0)})
    lines += ["", "The same against shorter converge runs (their first epochs; mean curves):", "",
              "| blend sweeps per step | converge tol | "
              + " | ".join(f"{unary_epochs} + {n} epochs" if unary_epochs else f"{n} epochs"
                           for n in lengths) + " |", "|---|---" + "|---" * len(lengths) + "|"]
    for k in args.sweeps:
        for tol in args.tols:
            lines.append(f"| {k} | {tol:g} | " + " | ".join(
                times(speedup(means["blend", k], means["converge", tol], unary_epochs + n,
                              score.higher))
                for n in lengths) + " |")
    lines += ["", *accuracy_of_tol]
    for k in args.sweeps:
        for tol in args.tols:
            lines += compare(score, means["blend", k], k, means["converge", tol], tol)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
