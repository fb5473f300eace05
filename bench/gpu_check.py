"""The GPU check: one prepared run on a GPU machine (docs/design.md §9).  Run it through
bench/gpu_check.sh (sets PYTHONPATH, OUT, copies the table):

    bash bench/gpu_check.sh                       # on the GPU machine; results in $OUT
    bash bench/gpu_check.sh --emulate             # the same flow on a CPU machine, tiny sizes
    python3 bench/gpu_check.py --out DIR [--steps ab] [--words-batch 65536] ...

a. correctness: DeviceBP on CudaKernels (float32, float64) against ConvexBP (float64), outputs
   poisoned with NaN so an element no kernel wrote fails; before any timing.
b. ms per sweep (CUDA events, after warm-up) of DeviceBP on 2nd-order words, fully connected
   binary graphs and 4-connected grids; effective bandwidth against a device-to-device copy
   (target >= 50 %), and speed against the plain-torch sweep of bench/torch_sweep.py (target
   >= 5x), side by side.
c. training throughput of each task (words, tagging, segmentation), `dstrain train` with
   run.device=cuda against run.device=cpu on the same machine (words: >= 20x).
d. `mpirun -n 2` on the one GPU (host-staged gradients) against one process: params.h5 equal.
e. bench/blend_vs_converge.py with run.device=cuda (the blend-vs-converge target of 3x).
f. the dense CRF's mean-field (lattice filtering) on the device against the same on the CPU, one
   image of bench/dense_crf.py: marginals equal within float32 rounding, ms per iteration of each.
g. `python3 -m pytest -m gpu` (the gpu-marked tests), its summary line.

Every result goes to OUT/gpu_check.json and OUT/gpu_check.md, rewritten after each step so a run
cut short keeps what it measured.  Exit code 1 when a check failed or a step crashed; a missed
performance target is reported (FAIL in the table), not an error.
--emulate: step a on EmulatedKernels (the same .cu compiled by g++), step b with torch on the CPU
(numpy copy bandwidth, perf_counter), steps c and d with run.device=cpu, the "GPU" side and the
mpirun runs taking the GPU code path with emulated kernels (debug.emulate_kernels=true), step f
on the CPU on both sides.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
from dstrain.graph import GraphBatch, RegionGraph, chain, fully_connected, grid  # noqa: E402
from dstrain.gpu.engine import DeviceBP  # noqa: E402
from dstrain.learning.messages import to_host  # noqa: E402
from helpers import random_loopy, random_tree, run_on_both  # noqa: E402  (tests/helpers.py)
from torch_sweep import TorchSweep, check_against_cpu  # noqa: E402

# Open MPI refuses root without these; the vader setting avoids CMA failures in containers
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMP_NUM_THREADS": "1"}
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-9}


class Report:
    """Rows of (step, check, value, target, status), saved as JSON and Markdown after each step."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows, self.failed = out, meta, [], False

    def add(self, step, check, value, target="", ok=None, error=False):
        status = "ERROR" if error else "INFO" if ok is None else "PASS" if ok else "FAIL"
        self.failed |= error
        self.rows.append({"step": step, "check": check, "value": value, "target": target,
                          "status": status})
        print(f"  [{status}] {step} {check}: {value}" + (f"  (target {target})" if target else ""),
              flush=True)

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(
            {"meta": self.meta, "rows": self.rows, "failed": self.failed}, indent=2) + "\n")
        lines = ["# GPU check (`bench/gpu_check.sh`)", ""] + [f"- {k}: {v}" for k, v in self.meta.items()]
        lines += ["", "| step | check | value | target | result |", "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['check']} | {r['value']} | {r['target']} | {r['status']} |"
                  for r in self.rows]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def wall_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in ms by perf_counter (work on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


class Device:
    """What differs between the GPU run and --emulate: kernels, arrays, clocks, streams."""

    def __init__(self, emulate: bool):
        self.emulate = emulate
        self.torch_device = torch.device("cpu" if emulate else "cuda")
        if emulate:   # on a shared small CPU, torch's thread pool turns 1 ms ops into 10 ms waits
            torch.set_num_threads(1)
        else:
            import cupy
            self.cupy = cupy

    def kernels(self, dtype):
        """A kernel set whose xp.empty is NaN-filled: an element no kernel wrote shows as NaN."""
        if self.emulate:
            from dstrain.gpu.emulator import EmulatedKernels
            return EmulatedKernels(dtype, poison=True)
        from dstrain.gpu.kernels import CudaKernels
        return CudaKernels(dtype, poison=True)

    def stream(self):   # DeviceBP launches on torch's stream, so torch's CUDA events time them
        if self.emulate:
            return contextlib.nullcontext()
        from dstrain.gpu.kernels import on_torch_stream
        return on_torch_stream()

    def to_xp(self, tensor):   # zero-copy: the kernels read torch's buffer
        return tensor.numpy() if self.emulate else self.cupy.from_dlpack(tensor)

    def time_ms(self, fn, repeats: int, warmup: int = 2) -> float:
        """Median wall time of fn() in ms: CUDA events on torch's stream, or perf_counter."""
        if self.emulate:
            return wall_ms(fn, repeats, warmup)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(np.median(times))

    def free(self):
        gc.collect()
        if not self.emulate:
            torch.cuda.empty_cache()
            self.cupy.get_default_memory_pool().free_all_blocks()


# --- a. correctness -------------------------------------------------------------------------------
def correctness_cases(rng, n: int):
    """(name, graphs, potential scale): every kernel path, n samples or so per case."""
    def lengths():
        return [int(k) for k in rng.integers(1, 15, n)]

    hierarchy = random_loopy(rng)
    zero = np.where([len(r) == 2 and bool(hierarchy.parents[k]) for k, r in
                     enumerate(hierarchy.regions)], 0.0, 1.0)
    cases = [
        ("chains order 1, C=26, lengths 1-14", [chain(k, 26) for k in lengths()]),
        ("chains order 2, C=26, lengths 1-14", [chain(k, 26, order=2) for k in lengths()]),
        ("chains order 1 and 2, C=3 and 4", [chain(k, 3 + k % 2, order=1 + k % 2) for k in lengths()]),
        ("pairs: random trees, grids", [random_tree(rng, 2 + k) for k in lengths()] + [grid(3, 4, 3)]),
        ("triples: random loopy", [random_loopy(rng) for _ in range(n)]),
        ("fully connected binary, 2-12", [fully_connected(int(k), 2) for k in rng.integers(2, 13, n)]),
        ("bethe counting numbers", [random_loopy(rng, counting_numbers="bethe") for _ in range(n)]
         + [random_tree(rng, 6, counting_numbers="bethe"), chain(6, 5, order=2, counting_numbers="bethe")]),
        ("max parents (eps c_p = 0)", [RegionGraph(hierarchy.cardinalities, hierarchy.regions,
                                                   counting_numbers=zero)] * n),
    ]
    cases = [(name, graphs, 2.0) for name, graphs in cases]
    cases.append(("mixed batch of all the above", [g for _, gs, _ in cases for g in gs[::4]], 2.0))
    cases.append(("magnitude 1e4: 2nd-order words", [chain(5, 26, order=2)] * n, 1e4))
    cases.append(("magnitude 1e4: fully connected 6", [fully_connected(6)] * n, 1e4))
    return cases


def compare(kernels, batch, rng, scale, sweeps=4):
    """(worst relative error of beliefs / dual / messages, what failed or None, M) on fresh
    random inputs."""
    dtype = kernels.dtype.type
    # rounded to the kernels' dtype first: the reference then sees the kernels' very inputs, and
    # the error measures their arithmetic, not the float32 rounding of inputs of magnitude 1e4
    potentials = rng.normal(scale=scale, size=batch.num_potentials).astype(dtype).astype(np.float64)
    messages = rng.normal(size=batch.num_messages).astype(dtype).astype(np.float64)
    outputs, result, cpu = run_on_both(batch, kernels, potentials, messages, sweeps)
    change = cpu.max_change
    # beliefs are exp(fhat / (eps c)), fhat a sum of potentials and messages: its rounding is a
    # few ulps of their largest magnitude M (float32: 1e-3 at 1e4; bethe's diverging messages
    # reach 1e5 in 4 sweeps), which is an error relative to the beliefs.  So beliefs may be off by
    # tolerance * max(1, M / 200): about 4 float32 ulps of M.
    magnitude = max(np.abs(potentials).max(initial=0), np.abs(cpu.messages).max(initial=0))
    worst = 0.0
    for name, mine in outputs.items():
        expected = getattr(cpu, name)
        if mine.dtype != dtype or not np.isfinite(mine).all():
            bad = np.size(mine) - np.isfinite(mine).sum()
            return np.inf, f"{name}: {bad} unwritten or non-finite ({mine.dtype})", magnitude
        if not np.isfinite(expected).all():   # else the NaN error below would pass
            return np.inf, f"{name}: the CPU reference is not finite", magnitude
        error = float(np.abs(mine - expected).max() / max(np.abs(expected).max(), 1.0))
        worst = max(worst, error)
        tolerance = TOLERANCE[dtype] * (max(1.0, magnitude / 200) if name == "beliefs" else 1.0)
        if error > tolerance:
            return worst, f"{name}: relative error {error:.2e} > {tolerance:.0e}", magnitude
    if result.sweeps != sweeps or abs(result.max_change - change) > 1e-4 * max(change, scale):
        return worst, f"max_change {result.max_change} vs {change} after {result.sweeps} sweeps", magnitude
    return worst, None, magnitude


def step_correctness(args, device, report):
    rng = np.random.default_rng(args.seed)
    report.add("a", "torch sweep == ConvexBP (float64, CPU)", f"{check_against_cpu(args.seed):.1e}",
               "<= 1e-10", True)
    for dtype in (np.float32, np.float64):
        kernels = device.kernels(dtype)
        for name, graphs, scale in correctness_cases(rng, args.check_samples):
            started = time.perf_counter()
            try:
                error, problem, magnitude = compare(kernels, GraphBatch(graphs), rng, scale)
            except Exception as exc:   # a crash is a failed check too: record it, go on
                error, problem, magnitude = np.inf, f"{type(exc).__name__}: {exc}", np.nan
            report.add("a", f"{np.dtype(dtype).name} {name} ({len(graphs)} graphs)",
                       f"{error:.1e}, M = {magnitude:.0e}" + (f" -- {problem}" if problem else "")
                       + f" [{time.perf_counter() - started:.1f}s]",
                       f"<= {TOLERANCE[dtype]:.0e} (beliefs: x max(1, M / 200))",
                       problem is None, error=problem is not None)


# --- b. timing -------------------------------------------------------------------------------------
def sweep_bytes(batch: GraphBatch, itemsize: int) -> int:
    """Memory traffic one sweep cannot avoid, in bytes: for every edge r -> p (each fast pair is
    read once per direction, twice per sweep) its pair's table, n_r * n_o potentials, the other
    child's message (n_o) and its own new message (n_r); per region its unary potentials (n_r).
    Index tables and the mu scratch are not counted: a lower bound of what the kernels move."""
    entries = 0
    for colour in batch.colours:
        entries += len(colour.region_entries)
        for g in colour.fast:
            n_r, n_o = g.own.shape[1], g.other.shape[1]
            entries += len(g.own) * (n_r * n_o + n_o + n_r)
    return entries * itemsize


def copy_bandwidth(device, args) -> float:
    """Device-to-device copy (read + write) in bytes/s: the best a streaming kernel can do."""
    n = (2**26 if args.emulate else 2**28)   # float32: 256 MiB on the CPU, 1 GiB on the GPU
    if args.emulate:
        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        ms = device.time_ms(lambda: np.copyto(dst, src), args.repeats)
    else:
        src = torch.ones(n, device=device.torch_device)
        dst = torch.empty_like(src)
        ms = device.time_ms(lambda: dst.copy_(src), args.repeats)
    return 2 * n * 4 / (ms * 1e-3)


def time_workload(args, device, report, name, graphs, copy_bw):
    started = time.perf_counter()
    batch = GraphBatch(graphs)
    bp = DeviceBP(batch, device.kernels(np.float32))
    baseline = TorchSweep(batch, device.torch_device, torch.float32)
    print(f"  {name}: {batch.num_potentials:,} potentials, {batch.num_messages:,} messages, "
          f"{len(batch.colours)} colours; built in {time.perf_counter() - started:.1f}s", flush=True)
    generator = torch.Generator(device.torch_device).manual_seed(args.seed)
    f = 2 * torch.randn(batch.num_potentials, generator=generator, device=device.torch_device)
    lam0 = torch.randn(batch.num_messages, generator=generator, device=device.torch_device)
    f_x, lam_x, k = device.to_xp(f), device.to_xp(lam0), args.sweeps
    with device.stream():
        # a run also allocates, reparameterises and computes beliefs and the dual: the difference
        # of runs of 1 + k and 1 sweeps leaves the k sweeps alone
        short = device.time_ms(lambda: bp.run(f_x, lam_x, max_sweeps=1, tol=0.0), args.repeats)
        long = device.time_ms(lambda: bp.run(f_x, lam_x, max_sweeps=1 + k, tol=0.0), args.repeats)
        kernel_ms = max(long - short, 1e-9) / k
        mine = to_host(bp.run(f_x, lam_x, max_sweeps=2, tol=0.0).messages)
    tables, lam = baseline.start(f), lam0.clone()
    torch_ms = device.time_ms(lambda: [baseline.sweep(tables, lam) for _ in range(k)], args.repeats) / k
    lam = lam0.clone()
    for _ in range(2):
        baseline.sweep(tables, lam)
    expected = lam.cpu().numpy()
    agree = float(np.abs(mine - expected).max() / max(np.abs(expected).max(), 1.0))
    traffic = sweep_bytes(batch, 4)
    bandwidth = traffic / (kernel_ms * 1e-3)
    report.add("b", f"{name}: kernels == torch sweep after 2 sweeps (float32)", f"{agree:.1e}",
               "<= 1e-3", agree <= 1e-3, error=not agree <= 1e-3)
    report.add("b", f"{name}: DeviceBP ms/sweep (float32)", f"{kernel_ms:.4f}")
    report.add("b", f"{name}: plain torch ms/sweep (float32)", f"{torch_ms:.4f}")
    report.add("b", f"{name}: bytes/sweep, effective bandwidth",
               f"{traffic / 1e6:.1f} MB, {bandwidth / 1e9:.1f} GB/s")
    report.add("b", f"{name}: bandwidth / copy bandwidth", f"{bandwidth / copy_bw:.1%}", ">= 50%",
               bandwidth / copy_bw >= 0.5)
    report.add("b", f"{name}: speed-up over plain torch", f"{torch_ms / kernel_ms:.1f}x", ">= 5x",
               torch_ms / kernel_ms >= 5)


def step_timing(args, device, report):
    copy_bw = copy_bandwidth(device, args)
    device.free()   # each measurement's buffers go when its function returns
    report.add("b", "copy bandwidth (read + write)", f"{copy_bw / 1e9:.1f} GB/s")
    workloads = [(f"2nd-order words 5x26, batch {args.words_batch}",
                  [chain(5, 26, order=2)] * args.words_batch),
                 (f"fully connected {args.fc_vars} binary, batch {args.fc_batch}",
                  [fully_connected(args.fc_vars, 2)] * args.fc_batch),
                 (f"4-connected grid 32x32x5, batch {args.grid_batch}",
                  [grid(32, 32, 5)] * args.grid_batch)]
    for name, graphs in workloads:
        try:
            time_workload(args, device, report, name, graphs, copy_bw)
        except Exception as exc:   # e.g. out of memory at a large batch: record, go on
            report.add("b", name, f"{type(exc).__name__}: {exc}", error=True)
        device.free()


# --- c, d. training ---------------------------------------------------------------------------------
def train(args, run_dir: Path, device: str, settings, ranks: int = 0, gpu_path: bool = False,
          task: str = "words"):
    """`dstrain train` on the task's debug config (configs/<task>_debug.yaml, its data under OUT;
    under `mpirun -n ranks` if ranks); the CLI's completed process.  Raises on a non-zero exit,
    with the end of its stderr."""
    data = [f"data.path={args.out / 'words.h5'}"] if task == "words" else \
        [f"data.path={args.out / f'{task}.h5'}", "data.num_val=20", "data.num_test=20",
         f"data.num_train={TASK_IMAGES[task][int(args.emulate)]}"]
    command = [sys.executable, "-m", "dstrain.cli", "train", "--run-dir", str(run_dir),
               "--config", f"configs/{task}_debug.yaml", "--no-progress",
               "--set", f"run.device={device}", *data, "train.variant=joint", *settings]
    if ranks:
        command = [args.mpirun, "-n", str(ranks), "--oversubscribe", "--bind-to", "none",
                   "-x", "PYTHONPATH", "-x", "PATH", *command]
    # --emulate: the "GPU" side still takes the GPU code path, with the kernels emulated
    command.append(f"debug.emulate_kernels={'true' if gpu_path and args.emulate else 'false'}")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=args.train_timeout)
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    print(f"    {run_dir.name}: {time.perf_counter() - started:.1f}s", flush=True)
    return done


def throughput(run_dir: Path, batch_size: int) -> float:
    """samples/s of the last epoch in metrics.jsonl (the first one warms up: compiles, allocates)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    last = rows[-1]
    if "samples_per_second" in last:
        return float(last["samples_per_second"])
    steps = last["step"] - (rows[-2]["step"] if len(rows) > 1 else 0)
    return steps * batch_size / last["seconds"]


def ensure_data(args) -> None:
    """OUT/words.h5, generated once for steps c and d."""
    if (args.out / "words.h5").exists():
        return
    done = subprocess.run([sys.executable, "-m", "dstrain.cli", "data", "words", "--out",
                           str(args.out / "words.h5"), "--train", str(args.train_words), "--val",
                           "500", "--test", "100", "--no-progress"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"dstrain data words: exit {done.returncode}: {done.stderr.strip()[-1500:]}")


def step_training(args, device, report):
    ensure_data(args)
    gpu = "cpu" if args.emulate else "cuda"
    for task in ("words", "tagging", "segmentation"):
        # metrics.jsonl gets a line (with samples_per_second) at the end of each epoch, none
        # when max_steps stops a run mid-epoch: so two whole epochs, and the second one is read
        # (the first compiles kernels and fills caches).  The CPU side keeps the config's
        # run.threads; tagging and segmentation generate their data on their first run.
        batch = args.train_batch if task == "words" else TASK_BATCH[task][int(args.emulate)]
        settings = ["train.epochs=2", "train.max_steps=0", f"train.batch_size={batch}"]
        speed = {}
        for label, side in (("gpu", gpu), ("cpu", "cpu")):   # --emulate: cpu on both sides
            run_dir = args.out / f"train_{task}_{label}"
            try:
                train(args, run_dir, side, settings, gpu_path=label == "gpu", task=task)
                speed[label] = throughput(run_dir, batch)
                report.add("c", f"{task}, {label} side: training samples/s, run.device={side}, "
                           f"batch {batch}", f"{speed[label]:.0f}")
            except Exception as exc:
                report.add("c", f"{task}, {label} side: training, run.device={side}",
                           f"{type(exc).__name__}: {exc}", error=True)
        if len(speed) == 2:
            ratio = speed["gpu"] / speed["cpu"]
            if task == "words":
                report.add("c", f"{task}: training throughput, {gpu} / cpu", f"{ratio:.1f}x",
                           ">= 20x", ratio >= 20)
            else:
                report.add("c", f"{task}: training throughput, {gpu} / cpu", f"{ratio:.1f}x")
        device.free()


def read_params(path: Path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, np.asarray(item))
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def step_mpi(args, device, report):
    if args.mpirun is None:
        report.add("d", "mpirun -n 2 vs 1 process", "skipped: no mpirun")
        return
    ensure_data(args)
    side = "cpu" if args.emulate else "cuda"
    settings = ["train.batching=global", "run.dtype=float64", "train.epochs=1",
                f"train.max_steps={args.mpi_steps}", f"train.batch_size={args.mpi_batch}"]
    try:
        train(args, args.out / "mpi_1", side, settings, gpu_path=True)
        train(args, args.out / "mpi_2", side, settings, ranks=2, gpu_path=True)
        one, two = (read_params(args.out / run / "params.h5") for run in ("mpi_1", "mpi_2"))
        if sorted(one) != sorted(two):
            raise ValueError(f"params.h5 hold different arrays: {sorted(one)} vs {sorted(two)}")
        diff = max(float(np.abs(one[k] - two[k]).max()) for k in one)
        size = max(float(np.abs(one[k]).max()) for k in one)
        report.add("d", f"params.h5, mpirun -n 2 vs 1 process ({side}, float64, global batching)",
                   f"max abs diff {diff:.1e}, relative {diff / size:.1e}", "<= 1e-6 relative",
                   diff <= 1e-6 * size)
    except Exception as exc:
        report.add("d", "mpirun -n 2 vs 1 process", f"{type(exc).__name__}: {exc}", error=True)


def step_blend(args, device, report):
    """bench/blend_vs_converge.py on the device (the target: blend reaches converge's final
    validation word accuracy >= 3x sooner; bench/results/blend_vs_converge.md has the CPU's numbers);
    blend at 1 and 2 sweeps per step, joint from scratch for --blend-epochs epochs (the config as
    shipped, 30 epochs, would not fit a short device lease)."""
    out = args.out / "blend_vs_converge.md"
    if args.emulate:   # the flow only: one tiny epoch on step c's data, the GPU code path emulated
        ensure_data(args)
        sets = ["run.device=cpu", f"data.path={args.out / 'words.h5'}", "data.generate=false",
                "train.variant=joint"]
        command = ["--epochs", "1", "--tols", "1e-4", "--seeds", "1", "--sweeps", "1"]
    else:
        sets = ["run.device=cuda", "train.variant=joint"]   # from scratch: fits the device time
        command = ["--epochs", str(args.blend_epochs), "--tols", "1e-4", "1e-6", "--seeds", "2"]
    sets.append(f"debug.emulate_kernels={'true' if args.emulate else 'false'}")
    done = subprocess.run([sys.executable, "bench/blend_vs_converge.py", *command, "--out", str(out),
                           "--set", *sets], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=args.train_timeout * 2)
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    heading = ""
    for line in out.read_text().splitlines():
        if line.startswith("## converge to tol"):   # "## converge to tol = T against blend (k ...)"
            heading = line.removeprefix("## ")
        if line.startswith("converge ends at"):
            sooner = line.split("**")[1] if "**" in line else "not reached"
            report.add("e", f"blend vs converge ({'emulated' if args.emulate else 'GPU'}), {heading}: "
                       + line.split(";")[0].removeprefix("converge ends at "), sooner, ">= 3x",
                       sooner != "not reached" and float(sooner.split("x")[0]) >= 3)


# --- f. mean-field --------------------------------------------------------------------------------
def step_mean_field(args, device, report):
    """The dense CRF of bench/dense_crf.py (240 x 320, 21 labels, its kernel widths, 5 iterations)
    on the device and on the CPU: marginals, and ms per iteration ((5 - 0 iterations) / 5, the
    kernels built beforehand; CUDA events on the device, perf_counter on the CPU)."""
    from dense_crf import BILATERAL, GAUSSIAN, ITERATIONS, workloads   # bench/dense_crf.py
    from dstrain.inference.dense_crf import DenseCRF, potts_compatibility

    name, image, scores = next(workloads(np.random.default_rng(args.seed)))
    sides = {"device": device.torch_device, "cpu": torch.device("cpu")}
    marginals, per_iteration = {}, {}
    for side, where in sides.items():
        crfs = [DenseCRF(torch.from_numpy(image)[None], spatial_sxy=GAUSSIAN[0],
                         bilateral_sxy=BILATERAL[0], bilateral_srgb=BILATERAL[1], iterations=k,
                         exclude_self=False, channels_last=True, device=where)
                for k in (0, ITERATIONS)]
        unary = torch.from_numpy(scores)[None].to(where)
        weights = torch.tensor([GAUSSIAN[1], BILATERAL[2]], device=where)
        potts = potts_compatibility(scores.shape[0], device=where)
        timer = device.time_ms if side == "device" else wall_ms
        none, five = (timer(lambda crf=crf: crf.mean_field(unary, weights, potts), args.repeats)
                      for crf in crfs)
        per_iteration[side] = max(five - none, 1e-9) / ITERATIONS
        marginals[side] = crfs[1].mean_field(unary, weights, potts).cpu().numpy()
        device.free()
    difference = float(np.abs(marginals["device"] - marginals["cpu"]).max())
    agree = float((marginals["device"].argmax(1) == marginals["cpu"].argmax(1)).mean())
    label = f"{name} image {image.shape[1]}x{image.shape[0]}, {scores.shape[0]} labels"
    report.add("f", f"mean-field marginals, {device.torch_device} == cpu ({label})",
               f"max abs difference {difference:.1e}, MAP agreement {agree:.4%}", "<= 1e-4",
               difference <= 1e-4, error=not difference <= 1e-4)
    report.add("f", f"mean-field ms per iteration, {device.torch_device}",
               f"{per_iteration['device']:.3f}")
    report.add("f", "mean-field ms per iteration, cpu (torch threads: "
               f"{torch.get_num_threads()})", f"{per_iteration['cpu']:.3f}")
    report.add("f", f"mean-field speed-up, {device.torch_device} / cpu",
               f"{per_iteration['cpu'] / per_iteration['device']:.1f}x")


# --- g. the gpu-marked tests ----------------------------------------------------------------------
def step_tests(args, device, report):
    """`python3 -m pytest -m gpu` from the source tree: its summary line (they skip without a
    GPU, so --emulate reports skips)."""
    if importlib.util.find_spec("pytest") is None:   # the GPU machine's image may lack it
        report.add("g", "pytest -m gpu", "not run: pytest is not installed here", error=True)
        return
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p",
                           "no:cacheprovider", "tests"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=args.train_timeout * 2)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    (args.out / "pytest_gpu.txt").write_text(done.stdout + done.stderr)
    report.add("g", "pytest -m gpu", summary, "exit 0 (5: none collected)",
               done.returncode in (0, 5), error=done.returncode not in (0, 5))


def describe(args) -> dict:
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": "emulated on the CPU (EmulatedKernels, torch CPU)" if args.emulate else "GPU",
            "torch": torch.__version__, "python": platform.python_version()}
    if args.emulate:
        meta["device"] = f"none: CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        return meta
    try:   # a broken CUDA install must still leave a table saying so
        import cupy
        meta.update(device=torch.cuda.get_device_name(), torch_cuda=torch.version.cuda,
                    cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    cuda_driver=cupy.cuda.runtime.driverGetVersion())
    except Exception as exc:
        meta.setdefault("device", f"unknown ({type(exc).__name__}: {exc})")
    return meta


# step c's tagging and segmentation runs: (GPU, --emulate) training images and batch size
TASK_IMAGES = {"tagging": (1000, 100), "segmentation": (200, 20)}
TASK_BATCH = {"tagging": (100, 50), "segmentation": (20, 10)}

# option: (GPU default, --emulate default, meaning)
SIZES = {
    "check-samples": (200, 4, "graphs per correctness case"),
    # the batch of a reported plain-torch timing of this sweep on an H100 (242 ns per sample);
    # building it on the host takes about 18 s and 5 GB of memory on a 2-core machine
    "words-batch": (65536, 32, "2nd-order word graphs in the timed batch"),
    "fc-vars": (38, 12, "variables of the fully connected graphs"),
    "fc-batch": (8192, 4, "fully connected graphs in the timed batch"),
    "grid-batch": (1024, 2, "32 x 32 grids of 5 states in the timed batch"),
    "sweeps": (20, 2, "sweeps per timed run"),
    "repeats": (5, 2, "timed runs (median)"),
    "train-words": (10000, 300, "training words in the generated data"),
    "train-batch": (1000, 50, "batch size of the throughput runs"),
    "mpi-steps": (4, 2, "steps of the mpirun parity runs"),
    "mpi-batch": (200, 20, "global batch of the mpirun parity runs"),
    "train-timeout": (300, 300, "seconds before a training run counts as hung"),
    "blend-epochs": (8, 1, "converge's epochs in step e (blend: up to twice as many)"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--emulate", action="store_true", help="CPU only, tiny sizes")
    parser.add_argument("--steps", default="abfcdeg", help="which steps to run, in order")
    parser.add_argument("--seed", type=int, default=0)
    for name, (gpu, cpu, what) in SIZES.items():
        parser.add_argument(f"--{name}", type=int, help=f"{what} [GPU {gpu}, --emulate {cpu}]")
    args = parser.parse_args()
    for name, (gpu, cpu, _) in SIZES.items():
        key = name.replace("-", "_")
        if getattr(args, key) is None:
            setattr(args, key, cpu if args.emulate else gpu)
    args.out = args.out.resolve()
    args.mpirun = shutil.which("mpirun")
    report = Report(args.out, describe(args))
    print(f"GPU check: {report.meta['device']}; results in {args.out}", flush=True)
    steps = {"a": ("correctness", step_correctness), "b": ("timing", step_timing),
             "c": ("training throughput", step_training), "d": ("mpirun -n 2", step_mpi),
             "e": ("blend vs converge", step_blend), "f": ("mean-field", step_mean_field),
             "g": ("pytest -m gpu", step_tests)}
    device = None
    for key in args.steps:
        title, step = steps[key]
        print(f"{key}. {title}", flush=True)
        started = time.perf_counter()
        try:
            device = device or Device(args.emulate)
            step(args, device, report)
        except Exception as exc:   # a step that crashes outside its own checks
            report.add(key, title, f"{type(exc).__name__}: {exc}", error=True)
        print(f"{key}. {title}: {time.perf_counter() - started:.1f}s", flush=True)
        report.save()
    print(("FAILED: see " if report.failed else "done: ") + str(args.out / "gpu_check.md"))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
