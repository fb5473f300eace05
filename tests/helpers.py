"""What several test files share: random graphs and potentials for the inference tests, and the
wrappers that run `dstrain` (or pytest) in a subprocess, alone or under `mpirun`."""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from dstrain.graph import RegionGraph
from dstrain.gpu.engine import DeviceBP
from dstrain.inference import ConvexBP
from dstrain.learning.messages import to_host


def random_tree(rng, num_variables, max_states=3, **graph_options) -> RegionGraph:
    """A random pairwise tree: unaries for every variable, pairs in random orientation and order."""
    cards = [int(c) for c in rng.integers(2, max_states + 1, num_variables)]
    regions = [(v,) for v in range(num_variables)]
    for v in range(1, num_variables):
        u = int(rng.integers(0, v))
        regions.append((u, v) if rng.random() < 0.5 else (v, u))
    order = rng.permutation(len(regions))
    return RegionGraph(cards, [regions[i] for i in order], **graph_options)


def random_loopy(rng, num_variables=7, num_triples=3, extra_pairs=3, max_states=3,
                 **graph_options) -> RegionGraph:
    """Triples, the pairs inside them, some more pairs and all unaries: a loopy 3-level graph."""
    cards = [int(c) for c in rng.integers(2, max_states + 1, num_variables)]
    sets = set()
    while len(sets) < num_triples:
        sets.add(frozenset(rng.choice(num_variables, 3, replace=False).tolist()))
    regions = [tuple(rng.permutation(sorted(t)).tolist()) for t in sets]
    inside = {frozenset((a, b)) for t in sets for a in t for b in t if a < b}
    pairs = set(inside)
    while len(pairs) < len(inside) + extra_pairs:
        pairs.add(frozenset(rng.choice(num_variables, 2, replace=False).tolist()))
    regions += [tuple(sorted(p)) for p in pairs]
    regions += [(v,) for v in range(num_variables)]
    order = rng.permutation(len(regions))
    return RegionGraph(cards, [regions[i] for i in order], **graph_options)


def random_potentials(rng, graph: RegionGraph, scale=1.0) -> list[np.ndarray]:
    return [rng.normal(scale=scale, size=shape) for shape in graph.shapes]


def consistency_error(graph: RegionGraph, beliefs) -> float:
    """Largest |sum_{y_p \\ y_r} b_p - b_r| over all edges."""
    worst = 0.0
    for e, (r, p) in enumerate(graph.edges):
        summed = np.bincount(graph.structure.child_state[e], beliefs[p].ravel(), graph.sizes[r])
        worst = max(worst, float(np.abs(summed - beliefs[r].ravel()).max()))
    return worst


def run_on_both(batch, kernels, potentials, messages, sweeps: int):
    """`sweeps` sweeps of DeviceBP on `kernels` (inputs cast to its dtype) and of ConvexBP
    (float64) from the same inputs: (the device's beliefs, dual and messages as host arrays,
    the device result, the CPU result).  The kernel checks of tests/ and bench/gpu_check.py."""
    cpu = ConvexBP(batch).run(potentials, messages, max_sweeps=sweeps, tol=0.0)
    xp, dtype = kernels.xp, kernels.dtype
    device = DeviceBP(batch, kernels).run(xp.asarray(potentials, dtype=dtype),
                                          xp.asarray(messages, dtype=dtype), max_sweeps=sweeps, tol=0.0)
    outputs = {name: to_host(getattr(device, name)) for name in ("beliefs", "dual", "messages")}
    return outputs, device, cpu


def run_params(run_dir) -> dict[str, np.ndarray]:
    """The final parameters a training run wrote (RUN_DIR/params.h5), by name."""
    with h5py.File(Path(run_dir) / "params.h5") as f:
        return {name: np.asarray(f[name]) for name in f}


def unary_beliefs(layout, beliefs) -> list[np.ndarray]:
    """Per layout group, (S, V, C) each variable's beliefs out of a flat (N,) vector."""
    beliefs = to_host(beliefs) if not hasattr(beliefs, "numpy") else beliefs.cpu().numpy()
    return [None if u is None else beliefs[u] for u in layout.unary_positions()]


def assert_groups_close(mine, theirs, **tolerance) -> None:
    """Two per-group lists of unary beliefs (numpy or torch) are equal within tolerance."""
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            a = a.cpu().numpy() if hasattr(a, "cpu") else a
            b = b.cpu().numpy() if hasattr(b, "cpu") else b
            np.testing.assert_allclose(a, b, **tolerance)


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# the mpirun of the venv's Open MPI (the test extras) before any other on PATH
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
# Open MPI refuses to run as root (CI runs as root) unless told
MPI_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def mpi_missing() -> str | None:
    """Why real `mpirun` jobs cannot run here, or None when they can."""
    if MPIRUN is None:
        return "no mpirun on PATH or beside the interpreter"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'dstrain[mpi]')"
    return None


@functools.lru_cache(maxsize=None)
def _open_mpi() -> bool:
    return "Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout


def launcher(ranks: int) -> list[str]:
    """`mpirun -n ranks` (oversubscribed with Open MPI: the tests start more ranks than there are
    cores), or nothing for ranks=0."""
    if not ranks:
        return []
    return [MPIRUN, "-n", str(ranks), *(["--oversubscribe"] if _open_mpi() else [])]


def run(command, ranks=0, env=None, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """`command` (a list) in a subprocess, under `mpirun -n ranks` if ranks; text output."""
    return subprocess.run([*launcher(ranks), *map(str, command)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**MPI_ENV, **(env or {})})


def dstrain(*args, ranks=0, env=None, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """The `dstrain` command (`python -m dstrain.cli ARGS`) in a subprocess, as a user runs it."""
    return run([sys.executable, "-m", "dstrain.cli", *args], ranks, env, cwd, timeout)


def train_args(config, run_dir, *sets, resume=None) -> list[str]:
    """`dstrain train` arguments: a config of configs/ (or a path), a run directory, overrides."""
    path = config if Path(config).is_absolute() else CONFIGS / config
    return ["train", "--no-progress", "--config", str(path), "--run-dir", str(run_dir),
            *(["--resume", resume] if resume else []), *(["--set", *sets] if sets else [])]


def dstrain_train(config, run_dir, data, *sets, ranks=0, resume=None, env=None, timeout=300):
    """`dstrain train` in a subprocess (under `mpirun -n ranks` if ranks) on data file `data`
    with --set overrides; asserts success and returns the finished process."""
    done = dstrain(*train_args(config, run_dir, f"data.path={data}", "data.generate=false", *sets,
                               resume=resume), ranks=ranks, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def pytest_under_mpirun(test_files, ranks=2, timeout=300) -> subprocess.CompletedProcess:
    """`mpirun -n ranks python -m pytest TEST_FILES`: rank-agnostic test files run by every rank
    (without pytest's cache, which the ranks would all write; mpirun's pty would colour the output)."""
    return run([sys.executable, "-m", "pytest", "-q", "--color=no", "-p", "no:cacheprovider",
                *test_files], ranks, timeout=timeout)


def wait_for(check, timeout=60) -> bool:
    """Poll `check()` every 0.2 s until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False
