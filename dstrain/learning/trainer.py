"""The training loop: epochs of mini-batch steps, evaluation, plateau schedule, run directory.

One step, as data flows (DESIGN.md §10): a batch of this process's samples -> the potential net
(torch) -> one flat potential vector -> inference (beliefs, dual) -> gradient = beliefs - truth ->
``torch.autograd.backward`` -> optimiser step.  The run directory gets ``config.yaml`` first,
``metrics.jsonl`` one line per epoch as it goes, and ``params.h5`` at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config, save_config
from ..data import generate_words, open_words
from ..models import WordCRF
from .decode import decode
from .messages import MessageStore
from .params import save_params
from .structured import InferenceOptions, backward, batch_loss, message_sizes


def phase_of(variant: str, epoch: int, pretrain_epochs: int) -> str:
    """What an epoch trains: 'unary', 'piecewise' or 'joint' (epochs count from 0)."""
    if variant == "pretrain_joint":
        return "unary" if epoch < pretrain_epochs else "joint"
    return variant


def ensure_data(config: Config, log=print) -> Path:
    path = Path(config.data.path)
    if not path.exists() and config.data.generate:
        log(f"{path} does not exist: generating it ({config.data.num_train}/{config.data.num_val}/"
            f"{config.data.num_test} words, seed {config.data.seed})")
        generate_words(path, num_train=config.data.num_train, num_val=config.data.num_val,
                       num_test=config.data.num_test, seed=config.data.seed)
    return path


def build_model(config: Config, data) -> WordCRF:
    m = config.model
    return WordCRF(data.image_shape, data.num_classes, data.max_length, unary=m.unary,
                   hidden=m.hidden, cnn_channels=m.cnn_channels, order=m.order,
                   pairwise_shared=m.pairwise_shared)


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


@torch.no_grad()
def evaluate(model: WordCRF, images, labels, lengths, order: int, options: InferenceOptions,
             batch_size: int = 200) -> dict:
    """Loss (inference run to convergence, or exact) and MAP accuracies on a split in memory."""
    if options.algorithm == "blend":   # no persistent messages for held-out words
        options = InferenceOptions(**{**options.__dict__, "algorithm": "converge"})
    total_loss, correct_chars, correct_words = 0.0, 0, 0
    for start in range(0, len(lengths), batch_size):
        rows = slice(start, start + batch_size)
        _, _, result = batch_loss(model, images[rows], labels[rows], lengths[rows], order, options)
        total_loss += float(result.loss.sum())
        predicted = decode(model, images[rows], lengths[rows], order)
        valid = labels[rows] >= 0
        hits = (predicted == labels[rows]) & valid
        correct_chars += int(hits.sum())
        correct_words += int((hits.sum(axis=1) == valid.sum(axis=1)).sum())
    return {"loss": total_loss / len(lengths), "char_accuracy": correct_chars / int(lengths.sum()),
            "word_accuracy": correct_words / len(lengths)}


def train(config: Config, run_dir: str | Path | None = None, progress: bool = True,
          log=print) -> dict:
    """Train as the config says; returns the last epoch's metrics."""
    from tqdm import tqdm

    run_dir = Path(run_dir or config.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.run.seed)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    path = ensure_data(config, log)
    with open_words(path, "train") as train_split, open_words(path, "val") as val_split:
        # this process's rows, in memory: a step must not decompress chunks of the whole file
        train_ids = np.arange(train_split.num_samples)
        train_x, train_y, train_len = train_split.read(train_ids)
        val_x, val_y, val_len = val_split.read(np.arange(val_split.num_samples))
        model = build_model(config, train_split)
    save_config(config, run_dir / "config.yaml")
    optimizer = build_optimizer(config, model)
    options = InferenceOptions.from_config(config.inference)
    store = None
    if options.algorithm == "blend" and config.model.order > 0:
        store = MessageStore(train_ids, message_sizes(train_len, model.num_classes, model.order))

    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    best_val, epochs_without_gain, step, last, previous_phase = float("inf"), 0, 0, {}, None
    t = config.train
    for epoch in range(t.epochs):
        phase = phase_of(t.variant, epoch, t.pretrain_epochs)
        if phase != previous_phase:   # a new loss: its plateau is measured afresh
            best_val, epochs_without_gain, previous_phase = float("inf"), 0, phase
        order = 0 if phase == "unary" else model.order
        step_options = options if phase == "joint" and order > 0 else \
            InferenceOptions(**{**options.__dict__, "algorithm": "local"})
        order_rng = np.random.default_rng([config.run.seed, epoch])
        batches = np.array_split(order_rng.permutation(len(train_ids)),
                                 max(1, -(-len(train_ids) // t.batch_size)))
        steps_before = step
        started, loss_sum, seen, chars, hits, sweeps = time.perf_counter(), 0.0, 0, 0, 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{t.epochs} {phase}", disable=not progress,
                   leave=False)
        for rows in bar:
            source, layout, result = batch_loss(model, train_x[rows], train_y[rows], train_len[rows],
                                                order, step_options, store, train_ids[rows])
            optimizer.zero_grad()
            backward(source, layout, result.gradient / len(rows))
            optimizer.step()
            loss_sum += float(result.loss.sum())
            seen += len(rows)
            chars += int(train_len[rows].sum())
            hits += layout.correct_characters(result.beliefs, train_y[rows])
            sweeps += result.sweeps
            step += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", char_acc=f"{100 * hits / chars:.1f}%")
            if t.max_steps and step >= t.max_steps:
                break
        model.eval()
        decode_order = 0 if phase == "unary" else model.order
        val = evaluate(model, val_x, val_y, val_len, decode_order, step_options
                       if phase != "joint" else options)
        model.train()
        if val["loss"] < best_val - 1e-9:
            best_val, epochs_without_gain = val["loss"], 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain > t.patience:   # a plateau: divide the step size
                for group in optimizer.param_groups:
                    group["lr"] *= t.plateau_factor
                epochs_without_gain = 0
        last = {"epoch": epoch + 1, "phase": phase, "step": step,
                "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1),
                "train_char_accuracy": hits / max(chars, 1),
                "sweeps_per_step": sweeps / max(step - steps_before, 1),
                "val_loss": val["loss"], "val_char_accuracy": val["char_accuracy"],
                "val_word_accuracy": val["word_accuracy"],
                "seconds": time.perf_counter() - started}
        with metrics_path.open("a") as out:
            out.write(json.dumps(last) + "\n")
        log(f"epoch {epoch + 1:3d} {phase:9s} train loss {last['train_loss']:.4f}  val loss "
            f"{val['loss']:.4f}  char {100 * val['char_accuracy']:.2f}%  word "
            f"{100 * val['word_accuracy']:.2f}%  ({last['seconds']:.1f}s)")
        if t.max_steps and step >= t.max_steps:
            break
    save_params(model, run_dir / "params.h5")
    return last
