"""Difficulty check of the word generator: a unary-only one-hidden-layer MLP per character.

    python bench/calibrate_words.py                                   # 10k/2k/2k words, hidden 512
    python bench/calibrate_words.py --train 3000 --hidden 128         # the debug configuration

Generates a data set with ``dstrain.data.generate_words`` (timed), then trains a plain torch MLP
(H*W -> hidden -> classes, ReLU, cross-entropy, Adam or SGD with momentum) on the individual characters of the
training words, inputs in [0, 1]. Prints train/val/test character accuracy and word accuracy of
the per-character argmax. The generator is calibrated so that the default run lands at about
68-75 % test character accuracy (the paper's unary-only 1-layer MLPs: 61-67 %), which leaves
room for the pairwise potentials of a structured model. The recorded runs are in
bench/results/calibration.md.

Independent of the rest of dstrain apart from the data layer it measures.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.tasks.words import generate_words, open_words  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=10000, help="training words")
    parser.add_argument("--val", type=int, default=2000, help="validation words")
    parser.add_argument("--test", type=int, default=2000, help="test words")
    parser.add_argument("--hidden", type=int, default=512, help="hidden units of the MLP")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="characters per step")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="Adam, or SGD with momentum 0.9 (the paper's)")
    parser.add_argument("--lr", type=float, default=None, help="step size (default: adam 1e-3, sgd 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=None,
                        help="keep the generated file here (or reuse it if it exists); default: a temp file")
    return parser.parse_args(argv)


def load_split(path: Path, split: str):
    """All characters of a split: x (n_chars, H*W) float32, y (n_chars,), word index (n_chars,)."""
    with open_words(path, split) as data:
        x, y = data.read(range(data.num_samples))
        num_classes = data.num_classes
    valid = y >= 0  # drop the -1 padding positions
    word_of_char = np.broadcast_to(np.arange(len(y))[:, None], y.shape)[valid]
    return (torch.from_numpy(x[valid].reshape(int(valid.sum()), -1)), torch.from_numpy(y[valid]),
            word_of_char, num_classes)


def accuracies(model, x, y, word_of_char, batch=4096):
    """(character accuracy, word accuracy): a word is right when all its characters are."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    correct = (predicted == y).numpy()
    wrong_per_word = np.bincount(word_of_char, weights=~correct)
    return float(correct.mean()), float((wrong_per_word == 0).mean())


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or Path(tmp) / "words.h5"
        if path.exists():
            print(f"reusing {path}")
        else:
            start = time.perf_counter()
            generate_words(path, args.train, args.val, args.test, seed=args.seed, progress=False)
            seconds = time.perf_counter() - start
            print(f"generated {args.train}/{args.val}/{args.test} words in {seconds:.1f} s "
                  f"({path.stat().st_size / 2**20:.1f} MiB)")
        splits = {name: load_split(path, name) for name in ("train", "val", "test")}

    x_train, y_train, _, num_classes = splits["train"]
    model = nn.Sequential(nn.Linear(x_train.shape[1], args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, num_classes))
    if args.optimizer == "adam":
        optimiser = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-3)
    else:
        optimiser = torch.optim.SGD(model.parameters(), lr=args.lr or 0.05, momentum=0.9)
    loss_function = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(args.batch_size):
            optimiser.zero_grad()
            loss_function(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
        if epoch % 5 == 0 or epoch == args.epochs:
            val_char, _ = accuracies(model, *splits["val"][:3])
            print(f"epoch {epoch:3d}: val char acc {val_char:.4f}")
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s "
          f"(MLP {x_train.shape[1]}-{args.hidden}-{num_classes}, {len(x_train)} training characters)")

    for name, (x, y, word_of_char, _) in splits.items():
        char_accuracy, word_accuracy = accuracies(model, x, y, word_of_char)
        print(f"{name:5s}: char acc {char_accuracy:.4f}   word acc {word_accuracy:.4f}")


if __name__ == "__main__":
    main()
