"""What one training step costs, phase by phase, with the pair tables shared and without.

    python bench/step_costs.py                # writes bench/results/step_costs.md
    python bench/step_costs.py --epochs 2 --out -

Each setting trains the model of `configs/words_debug.yaml` (joint, from scratch, one process, one
torch thread) for --epochs epochs twice, side by side from the same seed: once on the path
training takes on a CPU (`source_structured_loss`: where the pairs share tables, the engine
works on the tables, ConvexBP.sharing) and once on the flat path it replaced
(`flat_source_loss`: the flat potential vector, `structured_loss`, the gradient pulled back).
The step is the trainer's: forward, structured loss (message passing, beliefs, gradient),
backward, optimiser step (after the trainer's division of the gradients by the step's sample
count); this script times each part.  Before timing, the first step's loss and gradients of both
paths are checked against each other.  One epoch of each path runs first, untimed, so that
neither timed run pays for building the engine and filling caches.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.config import load_config  # noqa: E402
from dstrain.data import open_words  # noqa: E402
from dstrain.learning import MessageStore, message_sizes  # noqa: E402
from dstrain.learning.structured import (InferenceOptions, backward,  # noqa: E402
                                         flat_source_loss, source_structured_loss)
from dstrain.learning.trainer import build_model, build_optimizer, ensure_data  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "words_debug.yaml"
SETTINGS = [("blend, 1 sweep", ["inference.algorithm=blend", "inference.sweeps=1"]),
            ("blend, 2 sweeps", ["inference.algorithm=blend", "inference.sweeps=2"]),
            ("converge, tol 1e-4", ["inference.algorithm=converge", "inference.tol=1e-4"]),
            ("converge, tol 1e-6", ["inference.algorithm=converge", "inference.tol=1e-6"])]
PHASES = ("forward", "structured loss", "backward", "optimiser")


def train_timed(config, data, loss_of, epochs: int, check=None):
    """Per-phase seconds summed over all steps, the step count and the sweeps per step."""
    images, labels, lengths, split = data
    torch.manual_seed(config.run.seed)
    model = build_model(config, split)
    optimizer = build_optimizer(config, model)
    options = InferenceOptions.from_config(config.inference)
    store = MessageStore(np.arange(len(lengths)), message_sizes(lengths, model.num_classes,
                                                                model.order))
    seconds, steps, sweeps = dict.fromkeys(PHASES, 0.0), 0, 0
    batches = -(-len(lengths) // config.train.batch_size)
    for epoch in range(epochs):
        order = np.random.default_rng([config.run.seed, epoch]).permutation(len(lengths))
        for ids in np.array_split(order, batches):
            optimizer.zero_grad(set_to_none=False)
            t0 = time.perf_counter()
            layout = model.layout(lengths[ids])
            source = model.source(torch.from_numpy(images[ids]), model.order)
            t1 = time.perf_counter()
            result = loss_of(source.detach().double().numpy(), layout, labels[ids], options,
                             store, ids)
            t2 = time.perf_counter()
            backward(source, result)
            t3 = time.perf_counter()
            if check is not None and steps == 0:
                check(result, [p.grad.clone() for p in model.parameters()])
            for p in model.parameters():   # the trainer's mean over the step's samples
                p.grad /= len(ids)
            optimizer.step()
            t4 = time.perf_counter()
            for phase, (a, b) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
                seconds[phase] += b - a
            steps += 1
            sweeps += result.sweeps
    return seconds, steps, sweeps / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_costs.md"),
                        help="markdown file to write, or - for none")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, overrides in SETTINGS:
        config = load_config(CONFIG, ["train.variant=joint", *overrides])
        ensure_data(config)
        with open_words(config.data.path, "train") as split:
            images, labels, lengths = split.read(np.arange(split.num_samples))
            # what build_model reads from a split
            shape = SimpleNamespace(image_shape=split.image_shape, num_classes=split.num_classes,
                                    max_length=split.max_length)
        data = (images.astype(np.float32), labels, lengths, shape)
        first = {}

        def remember(result, grads):
            first["loss"], first["grads"] = result.loss, grads

        def compare(result, grads):
            np.testing.assert_allclose(result.loss, first["loss"], rtol=1e-9)
            for mine, theirs in zip(grads, first["grads"]):
                torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)

        if not rows:   # warm-up, not reported: the engine is built, caches fill
            for loss_of in (flat_source_loss, source_structured_loss):
                train_timed(config, data, loss_of, 1)
        flat = train_timed(config, data, flat_source_loss, args.epochs, check=remember)
        shared = train_timed(config, data, source_structured_loss, args.epochs, check=compare)
        for path, (seconds, steps, sweeps) in (("shared tables", shared), ("flat", flat)):
            total = sum(seconds.values())
            cells = " | ".join(f"{1e3 * seconds[p] / steps:.2f}" for p in PHASES)
            rows.append(f"| {name} | {path} | {sweeps:.1f} | {cells} | **{1e3 * total / steps:.2f}** |")
            print(rows[-1], flush=True)
        ratio = sum(flat[0].values()) / sum(shared[0].values())
        rows.append(f"| {name} | flat / shared | | | | | | **{ratio:.2f}x** |")
        print(rows[-1], flush=True)

    write_report([
        "# What a training step costs (`bench/step_costs.py`)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, numpy {np.__version__}, torch {torch.__version__}, 1 torch "
        f"thread; `configs/words_debug.yaml` joint from scratch, {args.epochs} epochs per run "
        f"(50 words per step), milliseconds per step averaged over all steps; the two paths of "
        f"a setting run one after the other from the same seed.", "",
        "| setting | path | sweeps/step | " + " | ".join(PHASES) + " | step ms |",
        "|---|---|---|---|---|---|---|---|",
        *rows, ""], args.out)


if __name__ == "__main__":
    main()
