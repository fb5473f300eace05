"""The training loop: sharded epochs of mini-batch steps, evaluation, plateau schedule, outputs.

One step, as data flows (docs/design.md): a batch of this rank's samples -> the model's outputs
(``model.potentials``) -> inference and the structured loss (``structured_loss``: beliefs, dual;
blend keeps each sample's messages) -> gradient = beliefs - truth -> ``torch.autograd.backward``
-> gradients summed over ranks and divided by the step's global sample count -> the same
optimiser step on every rank.  Nothing here knows a task: the model (found through
``dstrain.tasks``) says what its graphs, outputs, predictions and metrics are.

Each rank owns a fixed, contiguous block of the training set for the whole run (its messages live
there) and reads only those rows.  Rank 0 writes the run directory: ``config.yaml`` first,
``metrics.jsonl`` one line per epoch, ``params.h5`` (and ``messages.h5`` for blend) at the end.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from ..comm import GradientReducer, SingleProcess
from ..config import Config, config_to_yaml, save_config
from ..errors import InputError
from ..gpu.device import cuda_aware_mpi, resolve_device, use_device_buffers
from ..gpu.kernels import kernel_set
from ..models import Batch, StructuredModel
from ..models.layout import exact_kind
from ..tasks import get_model_class, get_task
from .messages import MessageStore, check_message_memory, message_memory_report
from .params import save_messages, save_params
from .structured import InferenceOptions, backward, structured_loss


def phase_of(variant: str, epoch: int, pretrain_epochs: int) -> str:
    """What an epoch trains: 'unary', 'piecewise' or 'joint' (epochs count from 0)."""
    if variant == "pretrain_joint":
        return "unary" if epoch < pretrain_epochs else "joint"
    return variant


def families_of(model: StructuredModel, phase: str) -> tuple[str, ...]:
    """The factor families a phase trains: the unary family alone, or all of them."""
    return tuple(model.families[:1]) if phase == "unary" else tuple(model.families)


def phase_options(options: InferenceOptions, phase: str) -> InferenceOptions:
    """Inference of a phase: the configured algorithm for joint training; for unary and
    piecewise training each region is its own classifier (``local``)."""
    return options if phase == "joint" else options.but(algorithm="local")


def ensure_data(config: Config, log=print) -> Path:
    path = Path(config.data.path)
    if not path.exists() and config.data.generate:
        d = config.data
        log(f"{path} does not exist: generating it ({config.task}, {d.num_train}/{d.num_val}/"
            f"{d.num_test} samples, seed {d.seed})")
        path.parent.mkdir(parents=True, exist_ok=True)   # a task's generator need not make it
        get_task(config.task).generate(path, d, progress=False)
    return path


def build_model(config: Config, data, device: torch.device = torch.device("cpu")) -> StructuredModel:
    """The config's model for a data split (``model.class``, or the task's default model)."""
    model = get_model_class(config.model.cls, config.task).from_data(data, config.model.options)
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
    the parameters' device and dtype."""
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


def message_sizes(model: StructuredModel, labels: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Message entries of each sample (its full graph): what blend keeps per sample."""
    return np.concatenate([[spec.num_messages for spec in model.graphs(
        Batch(None, labels[start:start + chunk]), model.families)]
        for start in range(0, len(labels), chunk)] or [np.zeros(0, np.int64)]).astype(np.int64)


def message_store(model: StructuredModel, owned: np.ndarray, labels: np.ndarray, kernels=None,
                  chunk: int = 4096, sizes: np.ndarray | None = None) -> MessageStore | None:
    """blend's persistent messages for the samples a rank owns, sized by their full graphs;
    None when the graphs have no edges."""
    sizes = message_sizes(model, labels, chunk) if sizes is None else sizes
    if not sizes.sum():
        return None
    if kernels is None:
        return MessageStore(owned, sizes)
    return MessageStore(owned, sizes, xp=kernels.xp, dtype=kernels.dtype)


def check_inference(model: StructuredModel, labels: np.ndarray, options: InferenceOptions) -> None:
    """Fail before training when the algorithm cannot run on the model's graphs."""
    if options.algorithm == "exact":
        for spec in set(model.graphs(Batch(None, labels), model.families)):
            exact_kind(spec)


def train_step(model: StructuredModel, batch: Batch, families, options: InferenceOptions,
               store: MessageStore | None = None, kernels=None):
    """One rank's part of a step: the model's outputs, inference and the structured loss, and
    the parameters' gradients summed over the batch (the caller reduces them over ranks and
    steps the optimiser).  Returns (potentials, result)."""
    potentials = model.potentials(batch, families)
    result = structured_loss(potentials, batch.y, options, store, batch.ids, kernels)
    backward(potentials, result)
    return potentials, result


def evaluate(model: StructuredModel, x, y, options: InferenceOptions, families=None,
             comm: SingleProcess = SingleProcess(), batch_size: int = 200, kernels=None) -> dict:
    """Loss (inference run to convergence, or exact) and the model's metrics of its decoded
    predictions, summed over ranks: {"loss": per sample, **model.metrics(...)}."""
    if options.algorithm == "blend":   # no persistent messages for held-out samples
        options = options.but(algorithm="converge")
    families = tuple(model.families) if families is None else families
    device = next(model.parameters()).device
    dtype = torch.empty(0, dtype=next(model.parameters()).dtype).numpy().dtype
    loss, sums = 0.0, None
    with torch.no_grad():
        for start in range(0, max(len(y), 1), batch_size):
            rows = slice(start, start + batch_size)
            batch = Batch(torch.from_numpy(np.asarray(x[rows], dtype=dtype)).to(device), y[rows])
            if len(batch):
                potentials = model.potentials(batch, families)
                result = structured_loss(potentials, batch.y, options, kernels=kernels)
                beliefs = result.unary_beliefs
                predicted = model.decode(batch, potentials, beliefs)
                loss += float(result.loss.sum())
            else:   # a rank without samples still contributes (zero) sums of every key
                predicted, beliefs = np.full(np.shape(batch.y), -1), []
            part = {k: np.asarray(v, dtype=np.float64)
                    for k, v in model.metric_sums(batch, predicted, beliefs).items()}
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
    keys = sorted(sums)   # every rank sends every key, in one order: one Allreduce
    totals = comm.allreduce_(np.concatenate([[loss, len(y)]] + [sums[k].ravel() for k in keys]))
    reduced, at = {}, 2
    for k in keys:
        reduced[k] = totals[at:at + sums[k].size].reshape(sums[k].shape)
        at += sums[k].size
    return {"loss": float(totals[0] / max(totals[1], 1)),
            **{k: float(v) for k, v in model.metrics(reduced).items()}}


@dataclass
class LoopState:
    """Where the loop stands: all a checkpoint needs besides parameters, optimiser and messages."""

    epoch: int = 0
    batch: int = 0                  # batches of `epoch` done
    step: int = 0
    best_val: float = float("inf")
    epochs_without_gain: int = 0
    previous_phase: str | None = None
    totals: list = field(default_factory=lambda: [0.0] * 4)   # loss, samples, correct, variables
    sweeps: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LoopState":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def _log_line(epoch: int, phase: str, train_loss: float, val: dict, seconds: float,
              names=None) -> str:
    shown = "  ".join(f"{name} {100 * value:.2f}%" for name, value in val.items()
                      if name != "loss" and (names is None or name in names))
    return (f"epoch {epoch:3d} {phase:9s} train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
            f"{shown}  ({seconds:.1f}s)")


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
        ensure_data(config, say)
    comm.barrier()   # the data exists before any rank opens it
    task, path = get_task(config.task), Path(config.data.path)
    with task.open(path, "train") as train_split, task.open(path, "val") as val_split:
        # this rank's rows, read once into memory (a step must not decompress chunks from disk)
        owned = shard(train_split.num_samples, comm.rank, comm.world_size)
        num_train = train_split.num_samples
        train_x, train_y = train_split.read(owned)
        val_x, val_y = val_split.read(shard(val_split.num_samples, comm.rank, comm.world_size))
        device = resolve_device(config.run.device, comm.local_rank)
        model = build_model(config, train_split, device)
    options = InferenceOptions.from_config(config.inference)
    check_inference(model, train_y, options)
    kernels = kernel_set(device, config.run.dtype, config.debug.emulate_kernels)   # None: CPU engine
    if options.algorithm == "blend":   # before anything is written: every rank's shard must fit
        sizes = message_sizes(model, train_y)
        itemsize = np.dtype(np.float64 if kernels is None else kernels.dtype).itemsize
        # unary and piecewise training never write a message (the store's zeros stay uncommitted)
        needed = slice(None) if config.train.variant in ("joint", "pretrain_joint") else slice(0)
        message_limit = check_message_memory(owned[needed], sizes[needed], itemsize, num_train,
                                             config.run.message_memory, comm, shard, device)
    numpy_dtype = torch.empty(0, dtype=getattr(torch, config.run.dtype)).numpy().dtype
    train_x, val_x = train_x.astype(numpy_dtype, copy=False), val_x.astype(numpy_dtype, copy=False)
    if kernels is not None:   # the shard's inputs live on the device: no copy per step
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
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    optimizer = build_optimizer(config, model)
    store = None
    if options.algorithm == "blend":
        store = message_store(model, owned, train_y, kernels, sizes=sizes)
        say(message_memory_report(store, comm, message_limit))

    loop = LoopState()
    if resume:
        where = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
        if where is None:
            raise InputError(f"--resume auto: no complete checkpoint in {checkpoint_dir(run_dir)}")
        loop = LoopState.from_dict(load_checkpoint(where, model, optimizer, store))
        say(f"resumed from {where}: epoch {loop.epoch + 1}, step {loop.step}")
    config_yaml = config_to_yaml(config)
    start = loop   # where this run began: the first epoch may continue a partial one

    def checkpoint(batch_in_epoch: int) -> None:
        state = LoopState(epoch, batch_in_epoch, step, best_val, epochs_without_gain,
                          previous_phase, [float(v) for v in totals], int(sweeps))
        save_checkpoint(checkpoint_dir(run_dir) / f"step-{step:09d}.h5", model, optimizer,
                        state.to_dict(), config_yaml, store, comm)

    metrics_path = run_dir / "metrics.jsonl"
    if root and not resume:
        metrics_path.write_text("")
    best_val, epochs_without_gain, previous_phase = \
        start.best_val, start.epochs_without_gain, start.previous_phase
    step, last, stopped = start.step, {}, False
    epoch, totals, sweeps = start.epoch - 1, np.zeros(4), 0   # as they stand if no epoch runs
    t = config.train
    fault = (config.debug.fault_step, config.debug.fault_rank)   # test-only; step 0: never
    for epoch in range(start.epoch, t.epochs):
        phase = phase_of(t.variant, epoch, t.pretrain_epochs)
        if phase != previous_phase:   # a new loss: its plateau is measured afresh
            best_val, epochs_without_gain, previous_phase = float("inf"), 0, phase
        families, step_options = families_of(model, phase), phase_options(options, phase)
        started, steps_before = time.perf_counter(), step
        continuing = epoch == start.epoch and start.batch > 0
        first_batch = start.batch if continuing else 0
        totals = np.array(start.totals if continuing else [0.0] * 4)
        sweeps, reduce_seconds = (start.sweeps if continuing else 0), 0.0
        batches = epoch_batches(config, epoch, owned, num_train, comm.rank)
        # disable=None: a bar only on a terminal, not in log files (Slurm output, pipes)
        bar = tqdm(batches[first_batch:], desc=f"epoch {epoch + 1}/{t.epochs} {phase}",
                   initial=first_batch, total=len(batches),
                   disable=None if progress and root else True, leave=False)
        for batch_in_epoch, ids in enumerate(bar, start=first_batch + 1):
            if fault == (step + 1, comm.rank):
                raise RuntimeError(f"injected fault at step {step + 1} (debug.fault_step)")
            rows = position[ids]
            reducer.zero_grad()
            if len(rows):
                # (numpy's row gather, then a view: cheaper than indexing a tensor with numpy rows)
                x = torch.from_numpy(train_x[rows]) if kernels is None \
                    else train_x[torch.as_tensor(rows, device=device)]
                batch = Batch(x, train_y[rows], ids)
                potentials, result = train_step(model, batch, families, step_options, store, kernels)
                correct, counted = potentials.layout.correct_variables(result.unary_beliefs, batch.y)
                totals += [result.loss.sum(), len(rows), correct, counted]
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
                                acc=f"{100 * totals[2] / max(totals[3], 1):.1f}%")
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
        val = evaluate(model, val_x, val_y, step_options, families, comm, kernels=kernels)
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
                f"train_{model.variable_name}_accuracy": totals[2] / max(totals[3], 1),
                "sweeps_per_step": sweeps / max(step - steps_before, 1),
                **{f"val_{name}": value for name, value in val.items()},
                "seconds": train_seconds,
                "samples_per_second": totals[1] / max(train_seconds, 1e-9),
                "allreduce_seconds": reduce_seconds,
                "ranks": comm.world_size}
        if root:
            with metrics_path.open("a") as out:
                out.write(json.dumps(last) + "\n")
        say(_log_line(epoch + 1, phase, last["train_loss"], val, train_seconds, model.logged_metrics))
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
