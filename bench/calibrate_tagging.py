"""Difficulty check of the tagging generator: a unary-only CNN, then what the other tags add.

    python bench/calibrate_tagging.py                      # 10k/2k/10k images, 10 epochs
    python bench/calibrate_tagging.py --data /tmp/tag.h5   # keep (or reuse) the generated file

Generates a data set with ``dstrain.tasks.tagging.data.generate_tagging`` (timed), then:

1. unary: a small torch CNN (conv 3x3 16 -> max-pool -> conv 3x3 32 -> max-pool -> linear to
   K logits, ReLU, Adam, binary cross-entropy summed over tags, one CPU thread by default), each
   tag decided on its own (logit > 0). Prints the test Hamming error (the fraction of wrong tag
   decisions over all images and tags).
2. proxies of what a model that also uses the other tags can add on top of those unaries, all
   fitted on the training split's CNN scores (the CNN fixed) and scored on test:
   - stacked LR: per tag, a logistic regression on the CNN's scores of all K tags (the logits
     and their sigmoids);
   - stacked MLP: the same inputs through one hidden layer of 128 ReLU units;
   - piecewise CRF: a fully connected pairwise CRF over the K tags, potentials
     a_k * logit_k + b_k per tag and a symmetric weight W_kl per tag pair, fitted through 5
     unrolled mean-field updates (BCE on the resulting marginals) and decided by those
     marginals > 0.5. This is the closest of the three to the framework's joint model, which
     also trains the CNN through the CRF.
3. references: predicting all zeros (the label density), and per tag a logistic regression on
   the *true* values of the other K-1 tags (how much the tags say about each other).

Calibration target: the unary CNN at 6-12 % test Hamming error (the paper's Flickr unary-only:
9.36 %), the proxies well below it (paper: piecewise 7.70 %, joint 7.25 %, 18 % and 23 % relative
cuts). The recorded runs are in bench/results/calibration.md.

Independent of the rest of dstrain apart from the data set it measures.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.tasks.tagging.data import generate_tagging, open_tagging  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=10000, help="training images")
    parser.add_argument("--val", type=int, default=2000, help="validation images")
    parser.add_argument("--test", type=int, default=10000, help="test images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step size of the CNN")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--per-tag", action="store_true", help="print each tag's errors")
    parser.add_argument("--data", type=Path, default=None,
                        help="keep the generated file here (or reuse it if it exists); default: a temp file")
    return parser.parse_args(argv)


def load_split(path: Path, split: str):
    with open_tagging(path, split) as data:
        x, y = data.read(range(data.num_samples))
        names = data.tag_names
    return torch.from_numpy(x), torch.from_numpy(y).float(), names


class SmallCNN(nn.Module):
    def __init__(self, channels: int, size: int, num_labels: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * (size // 4) ** 2, num_labels)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class MeanFieldCRF(nn.Module):
    """Fully connected pairwise CRF over binary tags on fixed unary scores, mean-field marginals.

    Energy: -sum_k (a_k s_k + b_k) y_k - sum_{k<l} W_kl y_k y_l. ``forward`` returns the logits
    of the marginals after ``iterations`` parallel mean-field updates.
    """

    def __init__(self, num_labels: int, iterations: int = 5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_labels))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.pairwise = nn.Parameter(torch.zeros(num_labels, num_labels))
        self.iterations = iterations
        self.register_buffer("off_diagonal", 1 - torch.eye(num_labels))

    def forward(self, scores):
        weights = (self.pairwise + self.pairwise.T) / 2 * self.off_diagonal
        unary = self.scale * scores.clamp(-15, 15) + self.bias
        logits = unary
        for _ in range(self.iterations):
            logits = unary + torch.sigmoid(logits) @ weights
        return logits


def predict(model, x, batch=2048) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def hamming(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(((logits > 0).float() != y).float().mean())


def errors_per_tag(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((logits > 0).float() != y).float().mean(0)


def fit_full_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int,
                   weight_decay: float = 1e-4) -> nn.Module:
    """Full-batch Adam on binary cross-entropy (the small second-stage models)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    loss_function = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss_function(model(inputs), targets).backward()
        optimiser.step()
    model.eval()
    return model


def stack_features(logits: torch.Tensor) -> torch.Tensor:
    return torch.cat([logits.clamp(-10, 10) / 5, torch.sigmoid(logits)], dim=1)


class OtherTags(nn.Module):
    """Per tag, logistic regression on the other tags' values (its own weight masked out)."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(num_labels, num_labels)
        self.register_buffer("off_diagonal", 1 - torch.eye(num_labels))

    def forward(self, y):
        return nn.functional.linear(y, self.linear.weight * self.off_diagonal, self.linear.bias)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or Path(tmp) / "tagging.h5"
        if path.exists():
            print(f"reusing {path}")
        else:
            start = time.perf_counter()
            generate_tagging(path, args.train, args.val, args.test, seed=args.seed, progress=False)
            seconds = time.perf_counter() - start
            print(f"generated {args.train}/{args.val}/{args.test} images in {seconds:.1f} s "
                  f"({path.stat().st_size / 2**20:.1f} MiB)")
        splits = {name: load_split(path, name) for name in ("train", "val", "test")}

    x_train, y_train, names = splits["train"]
    x_val, y_val, _ = splits["val"]
    x_test, y_test, _ = splits["test"]
    k = y_train.shape[1]
    print(f"{k} tags, {float(y_train.mean()) * 100:.1f} % positive "
          f"({float(y_train.sum(1).mean()):.2f} tags per image)")

    model = SmallCNN(x_train.shape[1], x_train.shape[2], k)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_function = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(args.batch_size):
            optimiser.zero_grad()
            loss_function(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
        print(f"epoch {epoch:3d}: val Hamming error {hamming(predict(model, x_val), y_val) * 100:.2f} %")
    print(f"trained the CNN for {args.epochs} epochs in {time.perf_counter() - start:.1f} s")

    scores = {"train": predict(model, x_train), "test": predict(model, x_test)}
    unary = hamming(scores["test"], y_test)

    torch.manual_seed(args.seed)
    features = {name: stack_features(s) for name, s in scores.items()}
    second_stage = {
        "stacked LR": (fit_full_batch(nn.Linear(2 * k, k), features["train"], y_train, 500), features),
        "stacked MLP": (fit_full_batch(nn.Sequential(nn.Linear(2 * k, 128), nn.ReLU(), nn.Linear(128, k)),
                                       features["train"], y_train, 800), features),
        "piecewise CRF": (fit_full_batch(MeanFieldCRF(k), scores["train"], y_train, 600, weight_decay=0.0),
                          scores),
    }
    others = fit_full_batch(OtherTags(k), y_train, y_train, 600, weight_decay=0.0)

    print(f"test Hamming error: all zeros {float(y_test.mean()) * 100:.2f} %, "
          f"LR on the other true tags {hamming(predict(others, y_test), y_test) * 100:.2f} %")
    print(f"  unary CNN      {unary * 100:.2f} %")
    test_logits = {}
    for name, (stage, inputs) in second_stage.items():
        test_logits[name] = predict(stage, inputs["test"])
        error = hamming(test_logits[name], y_test)
        print(f"  {name:14s} {error * 100:.2f} %  ({(1 - error / unary) * 100:.1f} % relative cut)")
    if args.per_tag:
        print("per tag: positive rate / unary / piecewise CRF error, %")
        unary_errors = errors_per_tag(scores["test"], y_test)
        crf_errors = errors_per_tag(test_logits["piecewise CRF"], y_test)
        print("  " + ", ".join(f"{tag} {float(y_test[:, i].mean()) * 100:.0f}/{float(unary_errors[i]) * 100:.1f}"
                               f"/{float(crf_errors[i]) * 100:.1f}" for i, tag in enumerate(names)))


if __name__ == "__main__":
    main()
