"""The training loop: sharded epochs of mini-batch steps, evaluation, plateau schedule, outputs.

One step, as data flows (DESIGN.md §10): a batch of this rank's samples -> the potential net
(torch) -> one flat potential vector -> inference (beliefs, dual; blend keeps each sample's
messages) -> gradient = beliefs - truth -> ``torch.autograd.backward`` -> gradients summed over
ranks and divided by the step's global sample count -> the same optimiser step on every rank.

Each rank owns a fixed, contiguous block of the training set for the whole run (its messages live
there) and reads only those rows.  Rank 0 writes the run directory: ``config.yaml`` first,
``metrics.jsonl`` one line per epoch, ``params.h5`` (and ``messages.h5`` for blend) at the end.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from ..comm import GradientReducer, SingleProcess
from ..config import Config, config_to_yaml, save_config
from ..data import generate_words, open_words
from ..gpu.device import cuda_aware_mpi, resolve_device, use_device_buffers
from ..gpu.kernels import kernel_set
from ..models import WordCRF
from .decode import decode
from .messages import MessageStore
from .params import save_messages, save_params
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


def build_model(config: Config, data, device: torch.device = torch.device("cpu")) -> WordCRF:
    m = config.model
    model = WordCRF(data.image_shape, data.num_classes, data.max_length, unary=m.unary,
                    hidden=m.hidden, cnn_channels=m.cnn_channels, order=m.order,
                    pairwise_shared=m.pairwise_shared)
    return model.to(device=device, dtype=getattr(torch, config.run.dtype))


def shard(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """The fixed, contiguous block of sample ids a rank owns (sizes differ by at most one)."""
    return np.arange(num_samples * rank // world_size, num_samples * (rank + 1) // world_size)


def epoch_batches(config: Config, epoch: int, owned: np.ndarray, num_samples: int,
                  rank: int) -> list[np.ndarray]:
    """This rank's batches (global sample ids) for one epoch; the same count on every rank."""
    t = config.train
    steps = max(1, -(-num_samples // t.batch_size))
    if t.batching == "global":   # the global batch of a step does not depend on the rank count
        order = np.random.default_rng([config.run.seed, epoch]).permutation(num_samples)
        mine = np.zeros(num_samples, dtype=bool)
        mine[owned] = True
        return [batch[mine[batch]] for batch in np.array_split(order, steps)]
    order = np.random.default_rng([config.run.seed, epoch, rank]).permutation(owned)
    return np.array_split(order, steps)


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, fused (one kernel over all parameters) where torch has it for
    the parameters' device and dtype: on the dev VM a step of the debug model took 37 us fused
    against 88 us (SGD) and 78 against 230 us (Adam) with torch's default loop over the tensors."""
    t = config.train
    if t.optimizer == "sgd":
        kind, options = torch.optim.SGD, dict(lr=t.lr, momentum=t.momentum,
                                              weight_decay=t.weight_decay)
    else:
        kind, options = torch.optim.Adam, dict(lr=t.lr, weight_decay=t.weight_decay)
    try:
        return kind(model.parameters(), fused=True, **options)
    except (RuntimeError, ValueError):   # no fused kernel for this device or dtype
        return kind(model.parameters(), **options)


def evaluate(model: WordCRF, images, labels, lengths, order: int, options: InferenceOptions,
             comm: SingleProcess = SingleProcess(), batch_size: int = 200, kernels=None) -> dict:
    """Loss (inference run to convergence, or exact) and MAP accuracies, summed over ranks."""
    if options.algorithm == "blend":   # no persistent messages for held-out words
        options = InferenceOptions(**{**options.__dict__, "algorithm": "converge"})
    dtype = next(model.parameters()).dtype
    totals = np.zeros(5)   # loss, correct characters, characters, correct words, words
    with torch.no_grad():
        for start in range(0, len(lengths), batch_size):
            rows = slice(start, start + batch_size)
            x = images[rows].astype(torch.empty(0, dtype=dtype).numpy().dtype, copy=False)
            source, _, result = batch_loss(model, x, labels[rows], lengths[rows], order, options,
                                           kernels=kernels)
            # the unary scores open the source vector: decode without a second forward pass
            unary = source[:x.shape[0] * x.shape[1] * model.num_classes].double().cpu().numpy()
            predicted = decode(model, x, lengths[rows], order,
                               unary.reshape(x.shape[0], x.shape[1], model.num_classes))
            valid = labels[rows] >= 0
            hits = (predicted == labels[rows]) & valid
            totals += [result.loss.sum(), hits.sum(), valid.sum(),
                       (hits.sum(axis=1) == valid.sum(axis=1)).sum(), len(valid)]
    comm.allreduce_(totals)
    return {"loss": totals[0] / max(totals[4], 1), "char_accuracy": totals[1] / max(totals[2], 1),
            "word_accuracy": totals[3] / max(totals[4], 1)}


def _injected_fault() -> tuple[int, int] | None:
    """Test-only fault switch: DSTRAIN_FAULT_STEP=k DSTRAIN_FAULT_RANK=r raise at step k on rank r
    (rank 0 if unset); (step, rank), or None when the switch is off.  Read once per run."""
    step = os.environ.get("DSTRAIN_FAULT_STEP")
    return None if step is None else (int(step), int(os.environ.get("DSTRAIN_FAULT_RANK", "0")))


def train(config: Config, run_dir: str | Path | None = None, progress: bool = True,
          log=print, comm: SingleProcess = SingleProcess(), resume: str | None = None,
          stop_signals: list | None = None) -> dict:
    """Train as the config says (this rank's part of it); returns the last epoch's metrics.

    `resume`: a checkpoint path, or "auto" for the newest complete one in the run directory.
    `stop_signals`: a list the process's signal handlers append to (the CLI installs them for
    SIGTERM and SIGUSR1); once any rank's is non-empty, all ranks finish the step, write a
    checkpoint and return.
    """
    stop_signals = [] if stop_signals is None else stop_signals
    from tqdm import tqdm

    root = comm.is_root
    say = log if root else (lambda *_: None)
    run_dir = Path(run_dir or config.run.dir)
    torch.manual_seed(config.run.seed)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if root:
        run_dir.mkdir(parents=True, exist_ok=True)
        ensure_data(config, say)
    comm.barrier()   # the data exists before any rank opens it
    path = Path(config.data.path)
    with open_words(path, "train") as train_split, open_words(path, "val") as val_split:
        # this rank's rows, read once into memory (a step must not decompress chunks from disk)
        owned = shard(train_split.num_samples, comm.rank, comm.world_size)
        num_train = train_split.num_samples
        train_x, train_y, train_len = train_split.read(owned)
        val_rows = shard(val_split.num_samples, comm.rank, comm.world_size)
        val_x, val_y, val_len = val_split.read(val_rows)
        device = resolve_device(config.run.device, comm.local_rank)
        model = build_model(config, train_split, device)
    kernels = kernel_set(device, config.run.dtype)   # None: the CPU engine
    numpy_dtype = torch.empty(0, dtype=getattr(torch, config.run.dtype)).numpy().dtype
    train_x, val_x = train_x.astype(numpy_dtype, copy=False), val_x.astype(numpy_dtype, copy=False)
    if kernels is not None:   # the shard's images live on the device: no copy per step
        train_x = torch.from_numpy(train_x).to(device)
    position = np.full(num_train, -1)
    position[owned] = np.arange(len(owned))   # global sample id -> row in this rank's arrays
    # gradients on a GPU go to MPI through pinned host memory unless the MPI handles device memory
    device_buffers = device.type == "cuda" and comm.uses_mpi and use_device_buffers(
        config.run.cuda_aware_mpi, cuda_aware_mpi(comm.library)[0])
    reducer = GradientReducer(model.parameters(), comm, int(config.run.bucket_mb * 2**20),
                              device_buffers=device_buffers)
    reducer.broadcast_parameters()
    if root:
        save_config(config, run_dir / "config.yaml")
    optimizer = build_optimizer(config, model)
    options = InferenceOptions.from_config(config.inference)
    store = None
    if options.algorithm == "blend" and config.model.order > 0:
        sizes = message_sizes(train_len, model.num_classes, model.order)
        store = MessageStore(owned, sizes) if kernels is None else \
            MessageStore(owned, sizes, xp=kernels.xp, dtype=kernels.dtype)

    # the loop's position and state: all a checkpoint needs besides parameters and messages
    loop = {"epoch": 0, "batch": 0, "step": 0, "best_val": float("inf"), "epochs_without_gain": 0,
            "previous_phase": None, "totals": [0.0] * 4, "sweeps": 0}
    if resume:
        where = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
        if where is None:
            raise FileNotFoundError(f"--resume auto: no complete checkpoint in {checkpoint_dir(run_dir)}")
        loop = load_checkpoint(where, model, optimizer, store)
        say(f"resumed from {where}: epoch {loop['epoch'] + 1}, step {loop['step']}")
    config_yaml = config_to_yaml(config)

    def checkpoint(batch_in_epoch: int) -> None:
        loop.update(epoch=epoch, batch=batch_in_epoch, step=step, best_val=best_val,
                    epochs_without_gain=epochs_without_gain, previous_phase=previous_phase,
                    totals=[float(v) for v in totals], sweeps=int(sweeps))
        save_checkpoint(checkpoint_dir(run_dir) / f"step-{step:09d}.h5", model, optimizer, loop,
                        config_yaml, store, comm)

    metrics_path = run_dir / "metrics.jsonl"
    if root and not resume:
        metrics_path.write_text("")
    best_val, epochs_without_gain, previous_phase = \
        loop["best_val"], loop["epochs_without_gain"], loop["previous_phase"]
    step, last, stopped = loop["step"], {}, False
    epoch, totals, sweeps = loop["epoch"] - 1, np.zeros(4), 0   # as they stand if no epoch runs
    t = config.train
    fault = _injected_fault()
    for epoch in range(loop["epoch"], t.epochs):
        phase = phase_of(t.variant, epoch, t.pretrain_epochs)
        if phase != previous_phase:   # a new loss: its plateau is measured afresh
            best_val, epochs_without_gain, previous_phase = float("inf"), 0, phase
        order = 0 if phase == "unary" else model.order
        step_options = options if phase == "joint" and order > 0 else \
            InferenceOptions(**{**options.__dict__, "algorithm": "local"})
        started, steps_before = time.perf_counter(), step
        continuing = epoch == loop["epoch"] and loop["batch"] > 0
        first_batch = loop["batch"] if continuing else 0
        # loss, words, correct characters (belief argmax), characters
        totals = np.array(loop["totals"] if continuing else [0.0] * 4)
        sweeps, reduce_seconds = (loop["sweeps"] if continuing else 0), 0.0
        batches = epoch_batches(config, epoch, owned, num_train, comm.rank)
        # disable=None: a bar only on a terminal, not in log files (Slurm output, pipes)
        bar = tqdm(batches[first_batch:], desc=f"epoch {epoch + 1}/{t.epochs} {phase}",
                   initial=first_batch, total=len(batches),
                   disable=None if progress and root else True, leave=False)
        for batch_in_epoch, ids in enumerate(bar, start=first_batch + 1):
            if fault == (step + 1, comm.rank):
                raise RuntimeError(f"injected fault at step {step + 1} (DSTRAIN_FAULT_STEP)")
            rows = position[ids]
            reducer.zero_grad()
            if len(rows):
                images = train_x[rows] if kernels is None else \
                    train_x[torch.as_tensor(rows, device=device)]
                source, layout, result = batch_loss(model, images, train_y[rows], train_len[rows],
                                                    order, step_options, store, ids, kernels)
                backward(source, result)    # summed over this rank's samples
                beliefs = result.beliefs if result.beliefs is not None else result.character_beliefs
                totals += [result.loss.sum(), len(rows),
                           layout.correct_characters(beliefs, train_y[rows]), train_len[rows].sum()]
                sweeps += result.sweeps
            finite = reducer.gradients_finite() and (not len(rows) or np.isfinite(result.loss).all())
            reduce_started = time.perf_counter()
            _, (signalled, broken) = reducer.reduce(len(rows), (len(stop_signals), not finite))
            reduce_seconds += time.perf_counter() - reduce_started
            if broken:   # before the update: the parameters and the last checkpoint stay good
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {step + 1}, "
                    + (f"on rank {comm.rank}" if not finite else f"on {int(broken)} other rank(s)")
                    + "; the last checkpoint (if any) is from before it")
            optimizer.step()
            step += 1
            if config.run.check_sync_every and step % config.run.check_sync_every == 0 \
                    and not reducer.parameters_identical():
                raise RuntimeError(f"parameters differ between ranks after step {step}")
            if not bar.disable:
                bar.set_postfix(loss=f"{totals[0] / max(totals[1], 1):.3f}",
                                char_acc=f"{100 * totals[2] / max(totals[3], 1):.1f}%")
            if signalled:   # Slurm's warning before preemption: save, then end cleanly
                checkpoint(batch_in_epoch)
                say(f"stopped by signal {stop_signals[0]} after step {step}: checkpoint written; "
                    f"continue with --resume auto")
                return last
            if config.run.checkpoint_every and step % config.run.checkpoint_every == 0:
                checkpoint(batch_in_epoch)
            if t.max_steps and step >= t.max_steps:
                stopped = batch_in_epoch < len(batches)
                break
        if stopped:   # mid-epoch: no evaluation; the checkpoint holds the place to go on from
            if config.run.checkpoint_every and step % config.run.checkpoint_every:
                checkpoint(batch_in_epoch)
            break
        train_seconds = time.perf_counter() - started
        comm.allreduce_(totals)
        model.eval()
        val = evaluate(model, val_x, val_y, val_len, 0 if phase == "unary" else model.order,
                       step_options if phase != "joint" else options, comm, kernels=kernels)
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
                "lr": optimizer.param_groups[0]["lr"], "train_loss": totals[0] / max(totals[1], 1),
                "train_char_accuracy": totals[2] / max(totals[3], 1),
                "sweeps_per_step": sweeps / max(step - steps_before, 1),
                "val_loss": val["loss"], "val_char_accuracy": val["char_accuracy"],
                "val_word_accuracy": val["word_accuracy"], "seconds": train_seconds,
                "samples_per_second": totals[1] / max(train_seconds, 1e-9),
                "allreduce_seconds": reduce_seconds,
                "ranks": comm.world_size}
        if root:
            with metrics_path.open("a") as out:
                out.write(json.dumps(last) + "\n")
        say(f"epoch {epoch + 1:3d} {phase:9s} train loss {last['train_loss']:.4f}  val loss "
            f"{val['loss']:.4f}  char {100 * val['char_accuracy']:.2f}%  word "
            f"{100 * val['word_accuracy']:.2f}%  ({train_seconds:.1f}s)")
        if t.max_steps and step >= t.max_steps:
            break
    if config.run.checkpoint_every and not stopped:
        epoch += 1   # the run is complete: a resume has nothing left to do
        checkpoint(0)
    if root:
        save_params(model, run_dir / "params.h5")
    if store is not None:
        save_messages(store, comm, run_dir / "messages.h5")
    return last
