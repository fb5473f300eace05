"""The unary MLP's forward and backward on the CPU: torch's F.linear (MKL) against dstrain's
Linear (oneDNN), side by side in one process.

    python bench/cpu_linear.py                 # writes bench/results/cpu_linear.md
    python bench/cpu_linear.py --threads 2 --out -

The model is `configs/words_debug.yaml`'s unary net (a batch of 50 five-letter words: 250 images
of 28x28, hidden layer 128, 26 classes) unless --hidden/--batch say otherwise.  Both paths start
from the same weights; their outputs and gradients are checked against a float64 reference
before anything is timed.  Rounds alternate between the two (this VM's speed drifts), and the
table gives the median of the rounds and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.models import potentials  # noqa: E402
from dstrain.models.potentials import UnaryMLP  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)


def torch_forward(model: UnaryMLP, images: torch.Tensor) -> torch.Tensor:
    """The same net through F.linear (what nn.Linear runs)."""
    x = images.flatten(1)
    for layer in model.net:
        x = F.linear(x, layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else layer(x)
    return x


def check(model: UnaryMLP, images, grad) -> float:
    """Largest relative difference of outputs and gradients of the oneDNN path from float64."""
    reference = UnaryMLP((28, 28), [model.net[0].out_features], grad.shape[1]).double()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    expected = torch_forward(reference, images.double())
    expected.backward(grad.double())
    model.zero_grad()
    out = model(images)
    out.backward(grad)
    worst = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        worst = max(worst, ((mine.grad.double() - theirs.grad).abs().max()
                            / theirs.grad.abs().max()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=250, help="images per step (50 words of 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100, help="forward+backward passes per round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_linear.md"))
    args = parser.parse_args()
    if potentials._ONEDNN_LINEAR is None:
        sys.exit("this torch has no oneDNN linear: dstrain's Linear runs F.linear, nothing to compare")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UnaryMLP((28, 28), [args.hidden], 26)
    images, grad = torch.rand(args.batch, 28, 28), torch.randn(args.batch, 26)
    error = check(model, images, grad)
    if error > 1e-4:
        sys.exit(f"oneDNN path differs from float64 by {error:.1e} (relative): not timing it")

    def step_torch():
        torch_forward(model, images).backward(grad)

    def step_onednn():
        model(images).backward(grad)

    timings = {"F.linear (MKL)": [], "dstrain Linear (oneDNN)": []}
    for _ in range(args.rounds):
        for name, step in zip(timings, (step_torch, step_onednn)):
            for _ in range(5):
                step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            timings[name].append(1e3 * (time.perf_counter() - started) / args.steps)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    slow, fast = medians.values()
    lines = ["# Unary MLP forward + backward on the CPU (`bench/cpu_linear.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, torch {torch.__version__}, "
             f"{args.threads} torch thread(s); {args.batch} images of 28x28 -> {args.hidden} -> 26, "
             f"medians of {args.rounds} alternating rounds of {args.steps} passes.  Before timing, "
             f"the oneDNN path's outputs and gradients were within {error:.1e} (relative) of a "
             "float64 reference.", "",
             "| path | ms per forward + backward (median; min-max of rounds) |", "|---|---|"]
    for name, values in timings.items():
        lines.append(f"| {name} | {medians[name]:.3f} ({min(values):.3f}-{max(values):.3f}) |")
    lines += ["", f"F.linear / oneDNN: **{slow / fast:.2f}x**"]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
