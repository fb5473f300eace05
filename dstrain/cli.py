"""The `dstrain` command.

    dstrain train --config configs/words_debug.yaml [--set train.lr=0.1 ...] [--run-dir DIR]
                  [--resume PATH|auto]
    dstrain eval --run-dir DIR [--data FILE] [--split test] [--metrics-out FILE]
    dstrain data {words,...} --out FILE [--train N --val N --test N --seed 0]
    dstrain plot DIR
    dstrain show DIR [--count 4]      (segmentation: images, truth, unary-only and CRF predictions)
    dstrain submit --config configs/words.yaml --nodes 2 --ntasks-per-node 4 [--dry-run]
    dstrain info

Bad input (``dstrain.errors.InputError``: a config key, a data file, a run directory, a device
request; or a path the system refuses) ends with one line on stderr and exit code 2; set
DSTRAIN_DEBUG=1 to see the traceback instead.  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import traceback
from pathlib import Path

EXIT_BAD_INPUT = 2
# the tasks with data generators: name -> (help, default train / val / test sizes)
GENERATORS = {"words": ("the paper-like word-recognition set (HDF5)", 10000, 2000, 2000),
              "tagging": ("a Flickr-like image-tagging set: 38 tags, 32x32 RGB (HDF5)", 10000, 2000,
                          10000),
              "segmentation": ("synthetic scenes of shapes: 5 classes, 32x32 RGB (HDF5)", 2000, 200,
                               500)}


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:   # a missing or broken optional package is a finding, not a crash
        return f"not available ({type(error).__name__})"


def cmd_info(args) -> int:
    import dstrain
    from .comm import init, launcher_environment, mpi4py_version
    from .gpu.device import describe

    print(f"dstrain {dstrain.__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module in ("numpy", "torch", "h5py", "cupy"):
        print(f"  {module:8s} {_version(module)}")
    print(f"  mpi4py   {mpi4py_version() or 'not available'}")
    from .inference import cpu_kernels
    print(f"  CPU kernels {cpu_kernels.status()}")
    launched = launcher_environment()
    library = None
    try:
        comm = init("mpi" if mpi4py_version() else "none")
    except Exception as error:   # an MPI that cannot start is a finding too
        print(f"  MPI      cannot start: {error}")
    else:
        library = comm.library
        print(f"  MPI      {comm.library}")
        print(f"  process  rank {comm.rank} of {comm.world_size} (local rank {comm.local_rank}), "
              f"launcher: {launched[0] if launched else 'none'}")
    for line in describe(library):
        print(line)
    return 0


def cmd_train(args) -> int:
    from .comm import init
    from .config import ConfigError, load_config
    from .learning.trainer import train

    # the communicator first: from here on, an error on any rank ends every rank (see main)
    args.comm = init("auto")
    config = load_config(args.config, [kv for group in args.set or [] for kv in group])
    if config.run.communicator == "none" and args.comm.world_size > 1:
        raise ConfigError(f"run.communicator = none, but the launcher started "
                         f"{args.comm.world_size} processes")
    if config.run.communicator == "mpi" and args.comm.world_size == 1:
        args.comm = init("mpi")
    if args.comm.world_size > 1:   # one line per rank, so a launch can be checked at a glance
        print(f"dstrain: rank {args.comm.rank} of {args.comm.world_size} (local rank "
              f"{args.comm.local_rank}) on {platform.node()}", file=sys.stderr, flush=True)
    # Slurm sends SIGTERM (or SIGUSR1 with --signal) before preemption and at the time limit:
    # the trainer then checkpoints at the end of the step and returns; exit 0 so a requeue resumes
    stop_signals: list[int] = []
    previous = {number: signal.signal(number, lambda received, _frame: stop_signals.append(received))
                for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        train(config, run_dir=args.run_dir, progress=not args.no_progress, comm=args.comm,
              resume=args.resume, stop_signals=stop_signals)
    finally:   # main() called from Python (tests, notebooks) gets its process's handlers back
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def cmd_eval(args) -> int:
    import numpy as np

    from .config import load_config
    from .errors import InputError
    from .learning.params import load_params
    from .learning.structured import InferenceOptions
    from .learning.trainer import build_model, evaluate
    from .tasks import get_task

    run_dir = Path(args.run_dir)
    for needed in ("config.yaml", "params.h5"):
        if not (run_dir / needed).exists():
            raise InputError(f"{run_dir / needed} is missing: is {run_dir} the run "
                             "directory of a finished `dstrain train`?")
    config = load_config(run_dir / "config.yaml")
    data_path = args.data or config.data.path
    with get_task(config.task).open(data_path, args.split) as split:
        x, y = split.read(np.arange(split.num_samples))
        model = build_model(config, split)
    load_params(model, run_dir / "params.h5")
    model.eval()
    result = evaluate(model, x, y, InferenceOptions.from_config(config.inference))
    report = {"data": str(data_path), "split": args.split, "num_samples": int(len(y)), **result}
    text = json.dumps(report, indent=2)
    print(text)
    if args.metrics_out:
        Path(args.metrics_out).write_text(text + "\n")
    return 0


def cmd_data(args) -> int:
    from .config import DataConfig
    from .tasks import get_task

    sizes = DataConfig(path=args.out, num_train=args.train, num_val=args.val, num_test=args.test,
                       seed=args.seed)
    path = get_task(args.kind).generate(args.out, sizes, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def cmd_submit(args) -> int:
    from .config import load_config
    from .submit import SubmitOptions, render, submit

    overrides = tuple(kv for group in args.set or [] for kv in group)
    config = load_config(args.config, overrides)   # fail here, not in the queue, on a bad config
    options = SubmitOptions(config=args.config, nodes=args.nodes,
                            ntasks_per_node=args.ntasks_per_node, gpus_per_node=args.gpus_per_node,
                            time=args.time, partition=args.partition, launcher=args.launcher,
                            overrides=overrides, run_dir=args.run_dir or config.run.dir,
                            job_name=Path(args.run_dir or config.run.dir).name)
    if args.dry_run:
        print(render(options), end="")
        return 0
    job, code = submit(options, wait=args.wait)
    print(f"submitted job {job}; logs: {options.run_dir}/slurm-{job}.out and .err; "
          f"run directory: {options.run_dir}")
    if args.wait:
        print(f"job {job} ended with exit code {code}")
    return code


def cmd_plot(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .errors import InputError

    run_dir = Path(args.run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        raise InputError(f"{metrics_path} is missing: no training metrics to plot")
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        raise InputError(f"{metrics_path} has no epochs yet")
    epochs = [r["epoch"] for r in rows]
    metrics = [k for k in rows[0] if k.startswith("val_") and k != "val_loss"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    left.set(xlabel="epoch", ylabel="loss per sample", title="loss")
    for key in metrics:
        right.plot(epochs, [100 * r[key] for r in rows], label=key.removeprefix("val_"))
    right.set(xlabel="epoch", ylabel="%", title="validation metrics")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(args.out) if args.out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


def cmd_show(args) -> int:
    import numpy as np

    from .config import load_config
    from .errors import InputError
    from .learning.params import load_params
    from .learning.structured import InferenceOptions
    from .learning.trainer import build_model
    from .tasks import get_task

    run_dir = Path(args.run_dir)
    for needed in ("config.yaml", "params.h5"):
        if not (run_dir / needed).exists():
            raise InputError(f"{run_dir / needed} is missing: is {run_dir} the run "
                             "directory of a finished `dstrain train`?")
    config = load_config(run_dir / "config.yaml")
    task = get_task(config.task)
    with task.open(args.data or config.data.path, args.split) as split:
        x, y = split.read(np.arange(min(args.count, split.num_samples)))
        model = build_model(config, split)
    load_params(model, run_dir / "params.h5")
    model.eval()
    out = task.show(model, x.astype(np.dtype(config.run.dtype)), y,
                    InferenceOptions.from_config(config.inference),
                    Path(args.out) if args.out else run_dir / "predictions.png")
    print(f"wrote {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    from .submit import LAUNCHERS

    top = argparse.ArgumentParser(prog="dstrain", description="Deep structured models, sample-parallel.")
    commands = top.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model as a YAML config says")
    train.add_argument("--config", required=True, help="YAML file, e.g. configs/words_debug.yaml")
    train.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                       help="override config values, e.g. --set train.lr=0.1 data.path=FILE")
    train.add_argument("--run-dir", help="where config.yaml, metrics.jsonl, params.h5 go "
                                         "(default: run.dir of the config)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--resume", metavar="PATH|auto",
                       help="continue from a checkpoint (auto: the newest in RUN_DIR/checkpoints)")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy of a trained run on a data split")
    evaluate.add_argument("--run-dir", required=True)
    evaluate.add_argument("--data", help="HDF5 file (default: the run's data.path)")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--metrics-out", help="also write the JSON report to this file")
    evaluate.set_defaults(run=cmd_eval)

    data = commands.add_parser("data", help="generate a data set of a task")
    kinds = data.add_subparsers(dest="kind", required=True)
    for name, (what, train, val, test) in GENERATORS.items():
        kind = kinds.add_parser(name, help=what)
        kind.add_argument("--out", required=True)
        kind.add_argument("--train", type=int, default=train)
        kind.add_argument("--val", type=int, default=val)
        kind.add_argument("--test", type=int, default=test)
        kind.add_argument("--seed", type=int, default=0)
        kind.add_argument("--no-progress", action="store_true")
        kind.set_defaults(run=cmd_data)

    sub = commands.add_parser("submit", help="render the Slurm template for a config and sbatch it")
    sub.add_argument("--config", required=True)
    sub.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE")
    sub.add_argument("--nodes", type=int, default=1)
    sub.add_argument("--ntasks-per-node", type=int, default=2, help="ranks per node (1 per GPU)")
    sub.add_argument("--gpus-per-node", type=int, default=0)
    sub.add_argument("--time", default="01:00:00", help="wall-time limit, Slurm's format")
    sub.add_argument("--partition")
    sub.add_argument("--launcher", default="srun", choices=LAUNCHERS,
                     help="srun --mpi=pmix (needs Slurm's PMIx plugin) or Open MPI's mpirun inside "
                          "the allocation (docs/launching.md)")
    sub.add_argument("--run-dir", help="default: run.dir of the config")
    sub.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    sub.add_argument("--wait", action="store_true", help="wait for the job; exit with its code")
    sub.set_defaults(run=cmd_submit)

    plot = commands.add_parser("plot", help="training curves of a run as a PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    plot.set_defaults(run=cmd_plot)

    show = commands.add_parser("show", help="a few samples with truth and predictions as a PNG "
                                           "(segmentation: unary only beside the CRF)")
    show.add_argument("run_dir")
    show.add_argument("--data", help="HDF5 file (default: the run's data.path)")
    show.add_argument("--split", default="test", choices=("train", "val", "test"))
    show.add_argument("--count", type=int, default=4, help="samples to draw")
    show.add_argument("--out", help="PNG path (default: RUN_DIR/predictions.png)")
    show.set_defaults(run=cmd_show)

    info = commands.add_parser("info", help="versions of dstrain and the libraries it can use")
    info.set_defaults(run=cmd_info)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:
        from .errors import InputError

        # bad input: what the user gave is unusable (InputError), or a path the system refuses
        bad_input = isinstance(error, InputError) \
            or (isinstance(error, OSError) and error.filename is not None)
        if isinstance(error, OSError) and error.filename is not None and error.strerror:
            message = f"{error.filename}: {error.strerror}"
        else:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        comm = getattr(args, "comm", None)
        if comm is not None and comm.world_size > 1:
            # one failing rank must end the job, never leave the others waiting in a collective
            if not bad_input:
                traceback.print_exc()
            print(f"dstrain: error on rank {comm.rank} of {comm.world_size}: {message}",
                  file=sys.stderr, flush=True)
            comm.abort(EXIT_BAD_INPUT if bad_input else 1)
        if not bad_input or os.environ.get("DSTRAIN_DEBUG"):
            raise
        print(f"dstrain: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
