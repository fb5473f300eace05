"""Difficulty check of the segmentation generator: a unary-only fully convolutional net, then
cheap stand-ins for what a CRF on top of it can add.

    python bench/calibrate_segmentation.py                     # default data set, 3 conv layers
    python bench/calibrate_segmentation.py --epochs 10 --channels 32

Generates a data set with ``generate_segmentation`` (timed), trains a small per-pixel net (3x3
convolutions, no downsampling, ReLU, cross-entropy ignoring -1; receptive field 2 * layers + 1
pixels) on CPU, and reports pixel accuracy and mean IoU (VOC style: one confusion matrix over
all non-ignored test pixels, IoU per class, mean over classes) of:

- unary:      argmax of the net's scores;
- box 5x5:    argmax of the log-probabilities averaged over a 5x5 window;
- MF spatial: Potts mean field with a Gaussian spatial kernel (sigma 1.5 px, 5 iterations);
- MF bilateral: Potts mean field whose kernel also decays with colour difference (a windowed
  version of the dense CRF's appearance kernel), which can stop smoothing at colour edges.

The Potts weight of the mean-field variants is picked on the validation split (grid), then
applied to the test split. Independent of the rest of dstrain apart from the data layer. The
recorded runs are in bench/results/calibration.md.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.tasks.segmentation.data import (DEFAULT_STYLE, generate_segmentation,  # noqa: E402
                                             open_segmentation)

WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--test", type=int, default=500, help="test images")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--classes", type=int, default=5, help="classes, background included")
    parser.add_argument("--layers", type=int, default=3, help="3x3 convolutions")
    parser.add_argument("--channels", type=int, default=16, help="hidden channels")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam step size")
    parser.add_argument("--colour-sigma", type=float, default=0.2,
                        help="colour scale of the bilateral kernel (RGB in [0, 1])")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--style", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override SceneStyle fields, e.g. noise_sigma=(0.02,0.08)")
    parser.add_argument("--data", type=Path, default=None,
                        help="keep the generated file here (or reuse it if it exists); default: a temp file")
    return parser.parse_args(argv)


def load_split(path: Path, split: str):
    with open_segmentation(path, split) as data:
        x, y = data.read(range(data.num_samples))
        return torch.from_numpy(x), torch.from_numpy(y), data.num_classes


def make_net(in_channels: int, num_classes: int, layers: int, channels: int) -> nn.Module:
    modules, width = [], in_channels
    for _ in range(layers - 1):
        modules += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU()]
        width = channels
    modules.append(nn.Conv2d(width, num_classes, 3, padding=1))
    return nn.Sequential(*modules)


def scores(model, x, batch=256):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def evaluate(predicted: torch.Tensor, y: torch.Tensor, num_classes: int):
    """(pixel accuracy, mean IoU, per-class IoU) over the pixels with y >= 0."""
    valid = y >= 0
    confusion = torch.bincount(y[valid] * num_classes + predicted[valid],
                               minlength=num_classes ** 2).reshape(num_classes, num_classes).double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = true_positive / union.clamp(min=1)
    present = union > 0
    return (float(true_positive.sum() / confusion.sum()), float(iou[present].mean()), iou.tolist())


def box_smoothing(logits: torch.Tensor, size: int = 5) -> torch.Tensor:
    log_probs = F.log_softmax(logits, 1)
    return F.avg_pool2d(log_probs, size, stride=1, padding=size // 2, count_include_pad=False).argmax(1)


def gaussian_kernel(sigma: float, half: int) -> torch.Tensor:
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / sigma ** 2)
    kernel[half, half] = 0  # no message from a pixel to itself
    return kernel.flatten()


def pairwise_weights(images: torch.Tensor, spatial: torch.Tensor, half: int, colour_sigma):
    """(n, K, H, W) kernel values between each pixel and its K window neighbours (zero outside)."""
    n, channels, height, width = images.shape
    window = 2 * half + 1
    inside = F.unfold(torch.ones(1, 1, height, width), window, padding=half)   # (1, K, HW)
    weights = spatial[None, :, None] * inside
    if colour_sigma is not None:
        neighbours = F.unfold(images, window, padding=half).reshape(n, channels, window ** 2, -1)
        difference = ((neighbours - images.reshape(n, channels, 1, -1)) ** 2).sum(1)
        weights = weights * torch.exp(-0.5 * difference / colour_sigma ** 2)
    return weights


def mean_field(logits, weights, potts_weight: float, iterations: int = 5, half: int = 3):
    """Potts mean field: Q <- softmax(U + w * sum_j k(i, j) Q_j); returns the argmax labels."""
    n, num_classes, height, width = logits.shape
    window = 2 * half + 1
    q = F.softmax(logits, 1)
    for _ in range(iterations):
        neighbours = F.unfold(q, window, padding=half).reshape(n, num_classes, window ** 2, -1)
        message = (neighbours * weights[:, None]).sum(2).reshape(n, num_classes, height, width)
        q = F.softmax(logits + potts_weight * message, 1)
    return q.argmax(1)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or Path(tmp) / "segmentation.h5"
        if path.exists():
            print(f"reusing {path}")
        else:
            start = time.perf_counter()
            style = dataclasses.replace(DEFAULT_STYLE, **{
                field: ast.literal_eval(value) for field, value in (item.split("=", 1) for item in args.style)})
            generate_segmentation(path, args.train, args.val, args.test, height=args.size, width=args.size,
                                  num_classes=args.classes, seed=args.seed, progress=False, style=style)
            seconds = time.perf_counter() - start
            print(f"generated {args.train}/{args.val}/{args.test} images of {args.size}x{args.size} "
                  f"in {seconds:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
        splits = {name: load_split(path, name) for name in ("train", "val", "test")}

    x_train, y_train, num_classes = splits["train"]
    valid = y_train >= 0
    print("train pixel share per class (ignore excluded): "
          + " ".join(f"{share:.3f}" for share in
                     (torch.bincount(y_train[valid], minlength=num_classes) / valid.sum()).tolist())
          + f"; ignored {1 - float(valid.float().mean()):.3f}")
    model = make_net(x_train.shape[1], num_classes, args.layers, args.channels)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(args.batch_size):
            optimiser.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch], ignore_index=-1).backward()
            optimiser.step()
        x_val, y_val, _ = splits["val"]
        _, val_iou, _ = evaluate(scores(model, x_val).argmax(1), y_val, num_classes)
        print(f"epoch {epoch:3d}: val mean IoU {val_iou:.4f}")
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s "
          f"({args.layers} conv layers, {args.channels} channels)")

    spatial = gaussian_kernel(1.5, 3)
    variants = {"MF spatial": None, "MF bilateral": args.colour_sigma}
    chosen = {}
    x_val, y_val, _ = splits["val"]
    val_logits = scores(model, x_val)
    for name, colour_sigma in variants.items():
        weights = pairwise_weights(x_val, spatial, 3, colour_sigma)
        results = {w: evaluate(mean_field(val_logits, weights, w), y_val, num_classes)[1] for w in WEIGHTS}
        chosen[name] = max(results, key=results.get)
        print(f"{name}: val mean IoU by Potts weight "
              + " ".join(f"{w}:{iou:.4f}" for w, iou in results.items()) + f" -> {chosen[name]}")

    for split in ("val", "test"):
        x, y, _ = splits[split]
        logits = scores(model, x)
        rows = {"unary": logits.argmax(1), "box 5x5": box_smoothing(logits)}
        for name, colour_sigma in variants.items():
            rows[name] = mean_field(logits, pairwise_weights(x, spatial, 3, colour_sigma), chosen[name])
        for name, predicted in rows.items():
            accuracy, iou, per_class = evaluate(predicted, y, num_classes)
            print(f"{split:5s} {name:13s}: pixel acc {accuracy:.4f}  mean IoU {iou:.4f}  per class "
                  + " ".join(f"{value:.3f}" for value in per_class))


if __name__ == "__main__":
    main()
