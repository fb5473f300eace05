"""Per-sweep cost of the vectorised convex-BP engine against the loop-based reference, side by side.

    python bench/inference.py                      # prints the table, writes bench/results/inference.md
    python bench/inference.py --repeats 5 --out -  # quicker, print only

Workloads (issue #2): (a) 2nd-order word graph, 5 variables x 26 states, pairs at distance 1 and 2,
batch 1000; (b) fully connected pairwise over 38 binary variables (703 pairs), batch 100;
(c) 1st-order chains of 3..14 letters x 26 states, batch 1000.  All c_r = 1, eps = 1, as for the
C++/OpenMP "fastmp" numbers quoted in the issue (2 threads, pure sweep cost, medians of 15).
(a shared) is (a) run from a word model's source vector, its two pair tables shared by every word
(``ConvexBP.sharing``, what training on the CPU does): checked against the flat engine's messages
and beliefs first; its read-out column includes the per-table belief sums.

Both engines run the same sweeps on the same potentials in this one process.  The reference is
timed on the first --reference-samples samples of the batch and reported per sample-sweep (its cost
is linear in the samples: it loops over them); the engine is timed on the whole batch.  Before any
timing the engine's messages after two sweeps are checked against the reference's.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dstrain.graph import GraphBatch, chain, fully_connected  # noqa: E402
from dstrain.inference import ConvexBP  # noqa: E402
from dstrain.inference.reference import ReferenceBP  # noqa: E402
from dstrain.tasks.words.model import chain_layout  # noqa: E402
from report import machine, write_report  # noqa: E402  (bench/report.py)

# fastmp, the paper group's C++/OpenMP message passer, 2 threads on a machine like this (issue #2)
FASTMP_MS = {"a": (68.0, 72.0), "b": (7.3, 8.3)}


def workloads(rng):
    yield "a", "2nd-order words, 5 x 26, batch 1000", [chain(5, 26, order=2)] * 1000
    yield "b", "fully connected, 38 binary, batch 100", [fully_connected(38, 2)] * 100
    yield "c", "1st-order chains, 3..14 x 26, batch 1000", [
        chain(int(n), 26) for n in rng.integers(3, 15, 1000)]


def times_ms(run, repeats) -> np.ndarray:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * np.array(times)


def median_ms(run, repeats) -> float:
    return float(np.median(times_ms(run, repeats)))


def measure(graphs, repeats, reference_samples, rng):
    batch = GraphBatch(graphs)
    engine = ConvexBP(batch)
    potentials = rng.normal(size=batch.num_potentials)
    per_sample = batch.unpack(potentials)

    # correctness first: two sweeps of both engines on the reference's samples
    few = GraphBatch(graphs[:reference_samples])
    few_state = ConvexBP(few).start(few.pack(per_sample[:reference_samples]))
    references = [ReferenceBP(g, p) for g, p in zip(graphs[:reference_samples],
                                                    per_sample[:reference_samples])]
    for _ in range(2):
        ConvexBP(few).sweep(few_state)
        for ref in references:
            ref.sweep()
    expected = np.concatenate([ref.messages[e].ravel() for ref in references for e in ref.graph.edges])
    error = float(np.abs(few_state.messages - expected).max())
    assert error < 1e-8, f"engine and reference disagree by {error:g}"

    build_ms = median_ms(lambda: GraphBatch(graphs), 3)
    state = engine.start(potentials)
    start_ms = median_ms(lambda: engine.start(potentials), 3)
    for _ in range(2):   # warm-up
        engine.sweep(state)
    sweeps = times_ms(lambda: engine.sweep(state), repeats)
    sweep_ms = float(np.median(sweeps))
    readout_ms = median_ms(lambda: (engine.beliefs(state), engine.dual(state)), 3)
    reference_ms = median_ms(lambda: [ref.sweep() for ref in references],
                             max(3, repeats // 5))
    return {
        "engine_ms": sweep_ms, "engine_quartiles": np.percentile(sweeps, [25, 75]),
        "engine_us_per_sample": 1e3 * sweep_ms / len(graphs),
        "reference_us_per_sample": 1e3 * reference_ms / reference_samples,
        "start_ms": start_ms, "readout_ms": readout_ms, "build_ms": build_ms,
        "colours": len(batch.colours), "check_error": error,
    }


def measure_shared(batch_size, repeats, rng):
    """Workload (a) with its pair tables shared, timed like measure(), checked against flat."""
    layout = chain_layout(np.full(batch_size, 5, dtype=np.int64).tobytes(), 5, 26, 2, True)
    engine = ConvexBP(GraphBatch(layout.graphs()))
    sharing = engine.sharing(layout.source_index, layout.source_size)
    source = rng.normal(size=layout.source_size)
    flat, state = engine.start(source[layout.source_index]), engine.start(source, sharing=sharing)
    for _ in range(2):
        engine.sweep(flat)
        engine.sweep(state)
    beliefs = engine.beliefs(state)
    formed = np.isfinite(beliefs)
    error = max(float(np.abs(state.messages - flat.messages).max()),
                float(np.abs(beliefs[formed] - engine.beliefs(flat)[formed]).max()))
    assert error < 1e-8, f"shared and flat engines disagree by {error:g}"

    start_ms = median_ms(lambda: engine.start(source, sharing=sharing), 3)
    sweeps = times_ms(lambda: engine.sweep(state), repeats)
    readout_ms = median_ms(lambda: (engine.beliefs(state), engine.table_beliefs(state),
                                    engine.dual(state)), 3)
    return {"engine_ms": float(np.median(sweeps)), "engine_quartiles": np.percentile(sweeps, [25, 75]),
            "start_ms": start_ms, "readout_ms": readout_ms, "colours": len(engine.batch.colours),
            "engine_us_per_sample": 1e3 * float(np.median(sweeps)) / batch_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed sweeps (median reported)")
    parser.add_argument("--reference-samples", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.md"),
                        help="markdown file to write, or - for none")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    rows = []
    for key, name, graphs in workloads(rng):
        r = measure(graphs, args.repeats, args.reference_samples, rng)
        speedup = r["reference_us_per_sample"] / r["engine_us_per_sample"]
        fastmp = FASTMP_MS.get(key)
        versus = (f"{fastmp[0]:.1f}-{fastmp[1]:.1f} ms: {fastmp[0] / r['engine_ms']:.2f}-"
                  f"{fastmp[1] / r['engine_ms']:.2f}x" if fastmp else "-")
        low, high = r["engine_quartiles"]
        rows.append(f"| ({key}) {name} | {r['colours']} | {r['engine_ms']:.2f} ({low:.2f}-{high:.2f}) | "
                    f"{r['engine_us_per_sample']:.2f} | {r['reference_us_per_sample']:.0f} | "
                    f"{speedup:.0f}x | {versus} | {r['start_ms']:.1f} | {r['readout_ms']:.1f} | "
                    f"{r['build_ms']:.1f} |")
        print(rows[-1], flush=True)
        if key == "a":
            shared = measure_shared(len(graphs), args.repeats, rng)
            low, high = shared["engine_quartiles"]
            rows.append(f"| (a shared) {name}, pair tables shared | {shared['colours']} | "
                        f"{shared['engine_ms']:.2f} ({low:.2f}-{high:.2f}) | "
                        f"{shared['engine_us_per_sample']:.2f} | - | - | "
                        f"{fastmp[0] / shared['engine_ms']:.2f}-{fastmp[1] / shared['engine_ms']:.2f}x | "
                        f"{shared['start_ms']:.1f} | {shared['readout_ms']:.1f} | - |")
            print(rows[-1], flush=True)

    header = [
        "| workload | colours | engine ms/sweep (quartiles) | engine µs/sample-sweep | reference µs/sample-sweep "
        "| engine vs reference | fastmp ms/sweep: engine faster by | start ms (per run) "
        "| beliefs+dual ms | batch build ms |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    write_report([
        "# Inference benchmark (`bench/inference.py`)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; "
        f"medians of {args.repeats} sweeps after 2 warm-up sweeps; reference timed on "
        f"{args.reference_samples} samples per workload.", "",
        *header, *rows, "",
        "*start*: per run (per training step) work that depends only on the potentials: the exp "
        "tables of the pairwise potentials. *beliefs+dual*: the read-out after the sweeps. "
        "The fastmp column divides the quoted fastmp time by our median (> 1: we are faster). "
        "These machines are shared VMs whose timings move between runs (single sweeps of (b) "
        "spread over 5-9 ms on an earlier one), so compare the quartiles too.", ""], args.out)

if __name__ == "__main__":
    main()
