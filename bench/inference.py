"""Convex-BP inference on the CPU, side by side in one process: the engine at 1 and N threads, the
loop-based reference, the plain-torch sweep, optionally the engine of another checkout (the
baseline) and the paper group's C++/OpenMP message passer (fastmp).

    python bench/inference.py                          # writes bench/results/inference.md
    python bench/inference.py --rounds 3 --out -       # quicker, print only
    python bench/inference.py --baseline /tmp/base --fastmp /work/peers/fastmp --threads 2

Workloads (eps = 1, N(0, 1) potentials, messages from zero):
  (a) 2nd-order words, 5 variables x 26 states, pairs at distance 1 and 2, batch 1000, c_r = 1;
  (a shared) the same run from a word model's source vector, its two pair tables shared by every
      word (``ConvexBP.sharing``, what training on the CPU does), read-out with the per-table
      belief sums;
  (b) fully connected pairwise over 38 binary variables (703 pairs, the tagging task's graph),
      batch 100, c_r = 1; (b trw), (b bethe) the same with those counting numbers;
  (c) 1st-order chains of 3..14 letters x 26 states, batch 1000, c_r = 1;
  (d) a 4-connected 32 x 32 grid, 5 states (the grid segmentation CRF's), batch 20, c_r = 1.

For every engine and thread count, interleaved rounds (every engine once per round, so a spell of
load on this shared machine hits all of them) time: *start* (the per-run work that depends on the
potentials: exp tables, messages in), *sweep* (median of 5 consecutive sweeps), *read-out* (beliefs
and dual) and *end to end* (start + 10 sweeps + dual + beliefs, divided by 10); the table gives
the medians over rounds, and *CPU/wall*, the process's CPU seconds per wall second during the
sweeps (how many cores a sweep kept busy).  Each engine's round starts after a pause of 0.3 s:
OpenBLAS's and OpenMP's workers busy-wait for a while after a threaded call, on the cores the next
engine would use.  The reference is timed once, on the first
--reference-samples samples, per sample-sweep (it loops over samples and regions).  Floors, at 1
and N threads, against which start and read-out can be read: for (a), (c) and (d), the exps of
the exp tables alone at start and the beliefs vector's bytes alone at read-out (TableWork); for
(b), the potentials' bytes read and as many written at start (what a sweep reads: w, E
and -K) and the beliefs' bytes alone (PotentialBytes).

Before any timing: the engine's messages after two sweeps against the reference's; the engine on N
threads bitwise against 1 thread (10 sweeps); the torch sweep's messages against the engine's; the
baseline's beliefs and dual against the engine's (10 sweeps); fastmp's converged beliefs and dual
against the engine's (float32: within 1e-5).  Ratios are printed only between numbers measured
here; a figure quoted from elsewhere is printed as a quote, with its source.

--baseline DIR: a checkout of dstrain (e.g. ``git worktree add /tmp/base <commit>``, or ``git
archive <commit> dstrain | tar -x -C /tmp/base``) whose ``dstrain`` package is imported as
``dstrain_baseline`` and timed like the engine (its torch thread count set to 1 and N).

--fastmp DIR: a directory holding a built ``fastmp`` extension (GSPEN's gspen/fastmp, public at
github.com/cgraber/GSPEN).  fastmp fixes c_r = 1, so it runs the convex workloads (a), (b), (c),
(d); its thread count is set through libgomp's omp_set_num_threads.  Its code is not part of this
repository; to build it outside the repository (numpy 2's headers need the two casts below):

    git clone https://github.com/cgraber/GSPEN /tmp/GSPEN && mkdir -p /work/peers/fastmp
    cat > /work/peers/fastmp/build.cpp <<'EOF'
    #include <functional>
    #include <Python.h>
    #include <numpy/arrayobject.h>
    #define PyArray_DIMS(o) PyArray_DIMS((PyArrayObject *)(o))
    #define PyArray_TYPE(o) PyArray_TYPE((PyArrayObject *)(o))
    #include "/tmp/GSPEN/gspen/fastmp/fastmpmodule.cpp"
    EOF
    cd /work/peers/fastmp && g++ -O3 -fopenmp -std=c++11 -DWHICH_FUNC=1 -fPIC -shared -w \\
        -I$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])") \\
        -I$(python -c "import numpy; print(numpy.get_include())") \\
        -I/tmp/GSPEN/gspen/fastmp build.cpp \\
        -o fastmp$(python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

fastmp keeps one object per sample (float32 potentials, its pair tables with the first variable's
state fastest); its start here converts the batch's potentials to that layout and hands each
object its potentials and zero messages; a sweep is (runmp with 5 sweeps - runmp with 0) / 5
(runmp ends with the dual); its read-out is update_beliefs and runmp with 0 sweeps.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dstrain.graph import GraphBatch, chain, fully_connected, grid  # noqa: E402
from dstrain.inference import ConvexBP  # noqa: E402
from dstrain.inference.reference import ReferenceBP  # noqa: E402
from dstrain.inference.threads import run_parallel  # noqa: E402
from dstrain.tasks.words.model import chain_layout  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)
from torch_sweep import TorchSweep  # noqa: E402

# a pause before each engine's round, so no other engine's idle workers still spin on the cores
SETTLE_SECONDS = 0.3
# issue #18's targets at N = 2 threads: (ms per sweep, end to end per sweep), on this VM
TARGETS = {"a": (10.0, 17.0), "b": (1.7, 2.9)}

# figures quoted from issue #18 (fastmp and dstrain on this kind of 2-core VM, another day):
# printed as quotes, never divided into a ratio with what this run measures
QUOTED = [
    ("(a) words", "fastmp ms/sweep, 1 / 2 threads", "62.1 / 31.1", "issue #18"),
    ("(b) fully connected", "fastmp ms/sweep, 1 / 2 threads", "9.6 / 4.9-5.0", "issue #18"),
]


def workloads(rng):
    """key: (description, graphs builder taking a graph module, fastmp runs it)."""
    lengths = rng.integers(3, 15, 1000)
    return {
        "a": ("2nd-order words, 5 x 26, batch 1000",
              lambda m: [m.chain(5, 26, order=2)] * 1000, True),
        "a shared": ("(a) with the two pair tables shared, from the source vector",
                     lambda m: [m.chain(5, 26, order=2)] * 1000, False),
        "b": ("fully connected, 38 binary, batch 100",
              lambda m: [m.fully_connected(38, 2)] * 100, True),
        "b trw": ("(b) with trw counting numbers",
                  lambda m: [m.fully_connected(38, 2, counting_numbers="trw")] * 100, False),
        "b bethe": ("(b) with bethe counting numbers",
                    lambda m: [m.fully_connected(38, 2, counting_numbers="bethe")] * 100, False),
        "c": ("1st-order chains, 3..14 x 26, batch 1000",
              lambda m: [m.chain(int(n), 26) for n in lengths], True),
        "d": ("4-connected grid, 32 x 32 x 5, batch 20",
              lambda m: [m.grid(32, 32, 5)] * 20, True),
    }


def timed(call):
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


# --- the engines, each behind start / sweep / read-out / run-10 --------------------------------
class Engine:
    """dstrain's ConvexBP (or a baseline checkout's), on `threads` threads."""

    def __init__(self, label, module, graphs, potentials, threads, sharing=None):
        self.label, self.threads, self.potentials = label, threads, potentials
        torch.set_num_threads(threads)
        batch = module.GraphBatch(graphs)
        self.engine = module.ConvexBP(batch) if module.baseline else \
            module.ConvexBP(batch, threads=threads)
        self.sharing = None if sharing is None else self.engine.sharing(*sharing)
        self.shared = sharing is not None

    def enter(self):
        torch.set_num_threads(self.threads)

    def start(self):
        return self.engine.start(self.potentials, sharing=self.sharing)

    def sweep(self, state):
        self.engine.sweep(state)

    def readout(self, state):
        if self.shared:
            return self.engine.table_beliefs(state), self.engine.dual(state)
        return self.engine.beliefs(state), self.engine.dual(state)

    def run10(self):
        return self.engine.run(self.potentials, max_sweeps=10, tol=0.0, sharing=self.sharing)


class Torch:
    """bench/torch_sweep.py's plain-torch sweep, float64 (no read-outs)."""

    def __init__(self, graphs, potentials, threads):
        self.label, self.threads = "plain torch sweep", threads
        self.sweeper = TorchSweep(GraphBatch(graphs), "cpu", torch.float64)
        self.potentials = torch.from_numpy(potentials)
        self.zeros = torch.zeros(self.sweeper.batch.num_messages, dtype=torch.float64)

    def enter(self):
        torch.set_num_threads(self.threads)

    def start(self):
        return self.sweeper.start(self.potentials), self.zeros.clone()

    def sweep(self, state):
        self.sweeper.sweep(*state)

    readout = run10 = None


class Fastmp:
    """The paper group's message passer: one FastMP object per sample, float32, c_r = 1."""

    def __init__(self, module, graphs, potentials, threads):
        self.label, self.threads, self.module = "fastmp (C++/OpenMP)", threads, module
        self.omp = ctypes.CDLL("libgomp.so.1")
        batch = GraphBatch(graphs)
        self.graphs, self.offsets = graphs, batch.potential_offset
        self.potentials = potentials
        self.layouts = []
        self.objects, self.messages, self.beliefs = [], [], []
        for g, own in zip(graphs, self._convert()):
            V, C = len(g.cardinalities), g.cardinalities[0]
            pairs = [tuple(r) for r in g.regions if len(r) == 2]
            m = module.FastMP(V, C, pairs, own)
            m.allocate_mp_mem(1.0)
            self.messages.append(np.zeros(m.get_num_msgs(), np.float32))
            m.update_msgs(self.messages[-1])
            self.beliefs.append(np.zeros(m.get_num_beliefs(), np.float32))
            m.update_beliefs_pointer(self.beliefs[-1])
            self.objects.append(m)

    def _convert(self) -> list[np.ndarray]:
        """Each sample's potentials in fastmp's layout: unaries, then every pair table with the
        first variable's state fastest (the transpose of dstrain's C order), float32; one
        vectorised conversion per graph structure."""
        out = [None] * len(self.graphs)
        by_structure = {}
        for s, g in enumerate(self.graphs):
            by_structure.setdefault(id(g.structure), []).append(s)
        for samples in by_structure.values():
            g = self.graphs[samples[0]]
            V, C, size = len(g.cardinalities), g.cardinalities[0], sum(g.sizes)
            rows = self.potentials[self.offsets[samples][:, None] + np.arange(size)]
            converted = np.empty(rows.shape, np.float32)
            converted[:, :V * C] = rows[:, :V * C]
            converted[:, V * C:].reshape(len(samples), -1, C, C)[:] = \
                rows[:, V * C:].reshape(len(samples), -1, C, C).transpose(0, 1, 3, 2)
            for row, s in zip(converted, samples):
                out[s] = row
        return out

    def enter(self):
        self.omp.omp_set_num_threads(self.threads)

    def start(self):
        converted = self._convert()
        for m, own, msgs in zip(self.objects, converted, self.messages):
            m.update_potentials(own)
            msgs.fill(0.0)
            m.update_msgs(msgs)
        self._held = converted   # fastmp keeps pointers into them
        return None

    def sweep(self, state, count=1):
        self.module.runmp(self.objects, count, 1.0)

    def readout(self, state):
        self.module.update_beliefs(self.objects, 1.0)
        self.module.runmp(self.objects, 0, 1.0)

    def run10(self):
        self.start()
        self.module.runmp(self.objects, 10, 1.0)
        self.module.update_beliefs(self.objects, 1.0)

    def converged(self, samples, sweeps):
        """Per-sample dual and beliefs (in dstrain's layout) after `sweeps` sweeps."""
        self.start()
        duals, beliefs = [], []
        for s in range(samples):
            duals.append(self.objects[s].runmp(sweeps, 1.0))
        self.module.update_beliefs(self.objects[:samples], 1.0)
        for s in range(samples):
            g = self.graphs[s]
            V, C = len(g.cardinalities), g.cardinalities[0]
            b = self.beliefs[s].astype(np.float64)
            beliefs.append(np.concatenate([b[:V * C], b[V * C:].reshape(-1, C, C)
                                           .transpose(0, 2, 1).ravel()]))
        return np.array(duals), np.concatenate(beliefs)


class TableWork:
    """A floor for the flat path (workloads a, c, d), numpy on `threads` threads (contiguous parts,
    through the engine's thread pool): start, the exp of every fast pair entry into an array of
    the exp tables' size (no max, no shift, no other start work); read-out, the beliefs vector's
    bytes, one copy of a vector of its size into it (the engine reads the exp tables and writes
    the beliefs: as many bytes, no arithmetic).  start and read-out return the slowest part's
    time, taken in its thread, as dstrain's run() times its phases (so neither counts the pool's
    waking up after the pause before each round)."""

    sweep = run10 = None

    def __init__(self, graphs, potentials, threads):
        self.label, self.threads = "exp tables and beliefs' bytes alone", threads
        batch = GraphBatch(graphs)
        entries = np.concatenate([g.entries.ravel() for g in batch.pair_groups])
        # (pages touched here, np.full writes them: the engine's in-run arrays are reused, their
        # pages are mapped)
        pairs, tables = potentials[entries], np.full(len(entries), 0.0)
        self.exps = [(pairs[part], tables[part]) for part in self._parts(len(entries))]
        self.copies = self._belief_copies(potentials, batch.num_potentials)

    def _belief_copies(self, potentials, size: int):
        """Per part, (a run of `potentials`, the same run of a beliefs vector of `size`)."""
        beliefs = np.full(size, 0.0)   # (pages touched, as above)
        return [(potentials[part], beliefs[part]) for part in self._parts(size)]

    def _parts(self, size):
        cuts = np.linspace(0, size, self.threads + 1).astype(int)
        return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]

    def enter(self):
        torch.set_num_threads(1)

    @staticmethod
    def _slowest(calls) -> float:
        return max(run_parallel([lambda call=call: timed(call)[0] for call in calls]))

    def start(self):
        return self._slowest([lambda x=x, y=y: np.exp(x, out=y) for x, y in self.exps])

    def readout(self, state):
        return self._slowest([lambda x=x, y=y: np.copyto(y, x) for x, y in self.copies])


class PotentialBytes(TableWork):
    """A floor for the dense path (workloads b), numpy on `threads` threads as TableWork: start,
    one copy of each part of the potentials into an array of its size (the engine reads every
    potential, and writes what a sweep reads, w, E = expm1(|w|) and -K: as many bytes, 2.28 MB
    against the potentials' 2.31 MB at batch 100); read-out, TableWork's copy of a vector of the
    beliefs' size into them."""

    def __init__(self, graphs, potentials, threads):
        self.label, self.threads = "potentials' bytes read and written, beliefs' bytes", threads
        out = np.full(len(potentials), 0.0)   # (pages touched, as TableWork's)
        self.tables = [(potentials[part], out[part]) for part in self._parts(len(potentials))]
        self.copies = self._belief_copies(potentials, GraphBatch(graphs).num_potentials)

    def start(self):
        return self._slowest([lambda x=x, y=y: np.copyto(y, x) for x, y in self.tables])


FLOORS = {"exp tables and beliefs' bytes alone": "the floor of start and read-out: the exp "
          "tables' exps alone, the beliefs' bytes alone", "potentials' bytes read and written, "
          "beliefs' bytes": "the floor of start and read-out: the potentials' bytes read and as "
          "many written, the beliefs' bytes alone"}


def load_baseline(path: str):
    """The dstrain package of another checkout, imported as dstrain_baseline."""
    package = Path(path) / "dstrain"
    spec = importlib.util.spec_from_file_location("dstrain_baseline", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dstrain_baseline"] = module
    spec.loader.exec_module(module)
    graph = importlib.import_module("dstrain_baseline.graph")
    inference = importlib.import_module("dstrain_baseline.inference")
    return argparse.Namespace(GraphBatch=graph.GraphBatch, chain=graph.chain, grid=graph.grid,
                              fully_connected=graph.fully_connected, ConvexBP=inference.ConvexBP,
                              baseline=True)


CURRENT = argparse.Namespace(GraphBatch=GraphBatch, chain=chain, grid=grid,
                             fully_connected=fully_connected, ConvexBP=ConvexBP, baseline=False)


# --- checks before timing -------------------------------------------------------------------
def check(key, graphs, potentials, engines, reference_samples, log):
    """Correctness first; raises AssertionError on a disagreement."""
    batch = GraphBatch(graphs)
    few = GraphBatch(graphs[:reference_samples])
    per_sample = batch.unpack(potentials)[:reference_samples]
    engine = ConvexBP(few, threads=1)
    state = engine.start(few.pack(per_sample))
    references = [ReferenceBP(g, p) for g, p in zip(graphs[:reference_samples], per_sample)]
    for _ in range(2):
        engine.sweep(state)
        for ref in references:
            ref.sweep()
    expected = np.concatenate([ref.messages[e].ravel() for ref in references
                               for e in ref.graph.edges])
    error = float(np.abs(state.messages - expected).max())
    assert error < 1e-8, f"({key}) engine and reference disagree by {error:g}"
    log(f"  ({key}) engine vs reference, messages after 2 sweeps: {error:.1e}")
    ones = {e.threads: e for e in engines if isinstance(e, Engine) and e.label.startswith("dstrain")}
    first = ones[1].run10()
    for threads, e in ones.items():
        other = e.run10()
        same = all(np.array_equal(getattr(first, k), getattr(other, k), equal_nan=True)
                   for k in ("messages", "dual", "beliefs"))
        assert same, f"({key}) {threads} threads differ from 1 thread"
    log(f"  ({key}) engine on {sorted(ones)} threads: bitwise the same after 10 sweeps")
    for e in engines:
        if isinstance(e, Engine) and e.label.startswith("baseline") and e.threads == 1:
            old = e.run10()
            errors = [float(np.nanmax(np.abs(old.dual - first.dual)))]
            if not e.shared:
                errors.append(float(np.abs(old.beliefs - first.beliefs).max()))
            else:
                errors += [float(np.abs(x - y).max())
                           for x, y in zip(old.table_beliefs, first.table_beliefs)]
            assert max(errors) < 1e-8, f"({key}) baseline differs by {max(errors):g}"
            log(f"  ({key}) baseline vs engine, dual and beliefs after 10 sweeps: {max(errors):.1e}")
        if isinstance(e, Torch) and e.threads == 1:
            tables, lam = e.start()
            for _ in range(2):
                e.sweep((tables, lam))
            state = ones[1].engine.start(potentials)
            for _ in range(2):
                ones[1].engine.sweep(state)
            error = float(np.abs(lam.numpy() - state.messages).max())
            assert error < 1e-9, f"({key}) torch sweep differs by {error:g}"
            log(f"  ({key}) plain torch sweep vs engine, messages after 2 sweeps: {error:.1e}")
        if isinstance(e, Fastmp) and e.threads == 1:
            samples = min(reference_samples, 5)
            dual, beliefs = e.converged(samples, 3000)
            few = GraphBatch(graphs[:samples])
            mine = ConvexBP(few, threads=1).run(few.pack(per_sample[:samples]), max_sweeps=5000,
                                                tol=1e-10)
            n = few.potential_offset[samples]
            error = float(np.abs(beliefs - mine.beliefs[:n]).max())
            relative = float(np.abs(dual - mine.dual[:samples]).max() / np.abs(mine.dual).max())
            assert error < 1e-5 and relative < 1e-5, f"({key}) fastmp differs: {error}, {relative}"
            log(f"  ({key}) fastmp (float32, 3000 sweeps) vs engine (converged), {samples} samples: "
                f"beliefs {error:.1e}, dual (relative) {relative:.1e}")


def reference_us(graphs, potentials, samples) -> float:
    batch = GraphBatch(graphs)
    references = [ReferenceBP(g, p) for g, p in zip(graphs[:samples],
                                                    batch.unpack(potentials)[:samples])]
    seconds, _ = timed(lambda: [ref.sweep() for ref in references])
    return 1e6 * seconds / samples


# --- timing ---------------------------------------------------------------------------------
def one_round(e) -> dict:
    e.enter()
    out = {}
    if e.sweep is None:   # a floor: start and read-out only, each timing itself
        return {"cpu": float("nan"), "start": e.start(), "readout": e.readout(None)}
    out["start"], state = timed(e.start)
    if isinstance(e, Fastmp):
        zero, _ = timed(lambda: e.sweep(state, 0))
        cpu, wall = time.process_time(), time.perf_counter()
        five, _ = timed(lambda: e.sweep(state, 5))
        out["sweep"] = (five - zero) / 5
    else:
        e.sweep(state)   # warm-up
        sweeps = []
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(5):
            seconds, _ = timed(lambda: e.sweep(state))
            sweeps.append(seconds)
        out["sweep"] = float(np.median(sweeps))
    out["cpu"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if e.readout is not None:
        out["readout"], _ = timed(lambda: e.readout(state))
        seconds, result = timed(e.run10)
        out["end to end"] = seconds / 10
        phases = getattr(result, "seconds", None) or {}
        if phases:   # dstrain's run() reports its phases (the slowest range's)
            out.update({"in run start": phases["start"], "in run sweep": phases["sweeps"] / 10,
                        "in run readout": phases["readout"],
                        "in run messages": phases.get("messages", float("nan"))})
    return out


def target_rows(key, medians, threads) -> list[str]:
    """Issue #18's conditions for one workload, as table rows."""
    rows = []

    def row(condition, measured, holds):
        rows.append(f"| ({key}) | {condition} | {measured} | {'yes' if holds else 'NO'} |")
    for t in threads:
        mine = medians.get((f"dstrain, {t} thread{'s' * (t > 1)}", t))
        if mine is None or "in run start" not in mine:
            continue
        sweep = mine["in run sweep"]
        row(f"{t} thread(s): start < one sweep", f"{mine['in run start']:.2f} vs {sweep:.2f} ms",
            mine["in run start"] < sweep)
        row(f"{t} thread(s): read-out < one sweep", f"{mine['in run readout']:.2f} vs {sweep:.2f} ms",
            mine["in run readout"] < sweep)
        if key in TARGETS and t == 2:
            row(f"2 threads: ms/sweep <= {TARGETS[key][0]}", f"{mine['sweep']:.2f}",
                mine["sweep"] <= TARGETS[key][0])
            row(f"2 threads: end to end <= {TARGETS[key][1]}", f"{mine['end to end']:.2f}",
                mine["end to end"] <= TARGETS[key][1])
    for t in threads:
        mine = medians.get((f"dstrain, {t} thread{'s' * (t > 1)}", t))
        for label, what in FLOORS.items():
            floor = medians.get((label, t))
            if floor and mine and "in run sweep" in mine:
                rows.append(f"| ({key}) | {t} thread(s): {what}, against one sweep | "
                            f"{floor['start']:.2f} / {floor['readout']:.2f} vs "
                            f"{mine['in run sweep']:.2f} ms | - |")
    one, today = medians.get(("dstrain, 1 thread", 1)), medians.get(("baseline, torch on 1 thread", 1))
    if one and today:
        for k in ("sweep", "end to end"):
            row(f"1 thread: {k} not slower than today", f"{one[k]:.2f} vs {today[k]:.2f} ms",
                one[k] <= today[k])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="N, the thread count timed besides 1")
    parser.add_argument("--workloads", default="a,a shared,b,b trw,b bethe,c,d")
    parser.add_argument("--reference-samples", type=int, default=20)
    parser.add_argument("--baseline", help="a dstrain checkout to time side by side")
    parser.add_argument("--fastmp", help="a directory with a built fastmp extension")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "inference.md"),
                        help="markdown file to write, or - for none")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.workloads.split(",")]
    threads = sorted({1, args.threads})
    baseline = load_baseline(args.baseline) if args.baseline else None
    fastmp = None
    if args.fastmp:
        sys.path.insert(0, args.fastmp)
        fastmp = importlib.import_module("fastmp")
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    specs = workloads(rng)
    rows, ratios, checks = [], [], []
    for key in keys:
        name, build, peer = specs[key]
        graphs = build(CURRENT)
        batch = GraphBatch(graphs)
        sharing = None
        if key == "a shared":
            layout = chain_layout(np.full(len(graphs), 5, dtype=np.int64).tobytes(), 5, 26, 2, True)
            source = rng.normal(size=layout.source_size)
            potentials, sharing = source, (layout.source_index, layout.source_size)
            flat = source[layout.source_index]
        else:
            potentials = flat = rng.normal(size=batch.num_potentials)
        engines = [Engine(f"dstrain, {t} thread{'s' * (t > 1)}", CURRENT, graphs, potentials, t,
                          sharing) for t in threads]
        if baseline is not None:
            engines += [Engine(f"baseline, torch on {t} thread{'s' * (t > 1)}", baseline,
                               build(baseline), potentials, t, sharing) for t in threads]
        if sharing is None and key not in ("c",):
            engines += [Torch(graphs, flat, t) for t in threads]
        if fastmp is not None and peer:
            engines += [Fastmp(fastmp, graphs, flat, t) for t in threads]
        if key.startswith("b"):
            engines += [PotentialBytes(graphs, flat, t) for t in threads]
        elif sharing is None:
            engines += [TableWork(graphs, flat, t) for t in threads]
        print(f"({key}) {name}: checks", flush=True)
        check(key, graphs, flat, engines, args.reference_samples, print)
        reference = reference_us(graphs, flat, min(args.reference_samples, 5 if "b" in key
                                                   else args.reference_samples))
        results = {id(e): [] for e in engines}
        for _ in range(args.rounds):
            for e in engines:
                # (let the previous engine's BLAS and OpenMP workers stop busy-waiting first:
                # OpenBLAS's spin on for about 0.1 s after a threaded call)
                time.sleep(SETTLE_SECONDS)
                results[id(e)].append(one_round(e))
        print(f"({key}) reference: {reference:.0f} us per sample-sweep", flush=True)
        medians = {}
        for e in engines:
            m = {k: 1e3 * float(np.median([r[k] for r in results[id(e)]]))
                 for k in results[id(e)][0] if k != "cpu"}
            m["cpu"] = float(np.median([r["cpu"] for r in results[id(e)]]))
            medians[(e.label, e.threads)] = m
            cell = lambda k: f"{m[k]:.2f}" if not np.isnan(m.get(k, np.nan)) else "-"  # noqa: E731
            in_run = " / ".join(cell(f"in run {k}")
                                for k in ("start", "sweep", "readout", "messages")) \
                if "in run start" in m else "-"
            rows.append(f"| ({key}) {name} | {e.label} | {e.threads} | {cell('start')} | "
                        f"{cell('sweep')} | {cell('readout')} | {cell('end to end')} | {in_run} | "
                        f"{'-' if np.isnan(m['cpu']) else format(m['cpu'], '.2f')} |")
            print(rows[-1], flush=True)
        rows.append(f"| ({key}) {name} | loop reference (per sample) | 1 | - | "
                    f"{reference / 1e3:.3f} per sample | - | - | - | - |")
        checks += target_rows(key, medians, threads)
        for t in threads:
            mine = medians.get((f"dstrain, {t} thread{'s' * (t > 1)}", t))
            peer_m = medians.get(("fastmp (C++/OpenMP)", t))
            if mine and peer_m:
                ratios.append(f"| ({key}) | {t} | {peer_m['sweep']:.2f} | {mine['sweep']:.2f} | "
                              f"{peer_m['sweep'] / mine['sweep']:.2f}x | "
                              f"{peer_m['end to end']:.2f} | {mine['end to end']:.2f} | "
                              f"{peer_m['end to end'] / mine['end to end']:.2f}x |")
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           text=True, capture_output=True).stdout.strip()
    lines = [
        "# Inference benchmark (`bench/inference.py`)", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; "
        f"code {commit}{' (with uncommitted changes)' if dirty else ''}"
        f"{'' if args.baseline is None else f'; baseline: {args.baseline}'}; load average "
        f"(1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} before and "
        f"{', '.join(f'{x:.2f}' for x in load_after)} after; medians of {args.rounds} "
        f"interleaved rounds.", "",
        "    python bench/inference.py " + " ".join(argv if argv is not None else sys.argv[1:]), "",
        "Times in ms for the whole batch. *start*: per-run work that depends on the potentials "
        "(`start()`); *sweep*: one sweep, every colour once (`sweep()`, which returns the largest "
        "message change); *read-out*: beliefs and dual (with shared tables: the per-table belief "
        "sums and dual); *end to end*: (start + 10 sweeps + dual + beliefs) / 10, one `run()`; "
        "*in run*: dstrain's `run()` timing its own phases, start / one sweep (no message change "
        "but the last) / read-outs (beliefs and dual) / the messages' export into the result "
        "(-: a baseline that times no such phase, its read-outs include the export), on arrays "
        "reused from the previous run (the standalone calls "
        "allocate theirs: fresh pages cost the kernel's zeroing); *CPU/wall*: CPU seconds per "
        "wall second during the sweeps.", "",
        "| workload | engine | threads | start | sweep | read-out | end to end | in run | CPU/wall |",
        "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if ratios:
        lines += ["fastmp against dstrain, both measured in this run (> 1: dstrain is faster):", "",
                  "| workload | threads | fastmp ms/sweep | dstrain ms/sweep | fastmp / dstrain "
                  "| fastmp end to end | dstrain end to end | fastmp / dstrain |",
                  "|---|---|---|---|---|---|---|---|", *ratios, ""]
    lines += ["Issue #18's conditions, from the medians above (start and read-out: `run()`'s own "
              "phases against its sweeps; 'today': the baseline at 1 thread):", "",
              "| workload | condition | measured | holds |", "|---|---|---|---|", *checks, ""]
    lines += ["Quoted, not measured in this run (no ratio is formed with them):", "",
              "| workload | figure | value | source |", "|---|---|---|---|",
              *[f"| {w} | {f} | {v} | {s} |" for w, f, v, s in QUOTED], ""]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
