"""Training step times of two checkouts of dstrain, side by side: which commit made steps faster.

    git worktree add /tmp/old <commit>
    python bench/checkout_ab.py /tmp/old .          # writes bench/results/checkout_ab.md
    python bench/checkout_ab.py /tmp/old . --rounds 1 --out -

Each round runs, for each checkout in turn and in a fresh process, the trainer of
`configs/words_debug.yaml` (one process, one torch thread) for a few epochs of unary-only,
blend (1 sweep) and converge (tol 1e-4) training, all from scratch on the same data file, and
reads each epoch's training seconds from metrics.jsonl.  A setting's figure is its fastest epoch
(the first is left out: it builds the engines) in milliseconds per step, and the table gives the
median of the rounds: this VM's speed drifts within minutes, so the fastest epoch of a run is
the steadiest view of what the code costs.  Converge's sweeps per step depend on the path the
training took (numerics may differ slightly between checkouts); the table shows them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_report  # noqa: E402  (bench/report.py)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"unary": ["train.variant=unary", "train.epochs=5"],
            "blend": ["train.variant=joint", "train.epochs=6"],
            "converge": ["train.variant=joint", "train.epochs=4", "inference.algorithm=converge"]}

# run inside a fresh process with the checkout first on sys.path
CHILD = """
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
from dstrain.config import load_config
from dstrain.learning.trainer import train
out = {}
for tag, overrides in json.loads(sys.argv[3]).items():
    run_dir = tempfile.mkdtemp()
    config = load_config(sys.argv[1] + "/configs/words_debug.yaml",
                         [*overrides, "data.path=" + sys.argv[2], "run.threads=1"])
    train(config, run_dir=run_dir, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in open(run_dir + "/metrics.jsonl")]
    steps = [b["step"] - a["step"] for a, b in zip(rows, rows[1:])]
    out[tag] = (min(1e3 * r["seconds"] / n for r, n in zip(rows[1:], steps)),
                rows[-1]["sweeps_per_step"])
print(json.dumps(out))
"""


def run_checkout(checkout: Path, data: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(checkout), str(data),
                           json.dumps(SETTINGS)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="a checkout (e.g. a git worktree) to compare against")
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "words_debug.h5",
                        help="word data file both use (the debug config generates it if missing)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "checkout_ab.md"))
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: no such data file; make it with: dstrain data words --out "
                 f"{args.data} --train 3000 --val 500 --test 500 (or run the debug config once)")
    names = {"old": args.old.resolve(), "new": args.new.resolve()}
    for name, path in names.items():
        if not (path / "dstrain" / "learning" / "trainer.py").exists():
            sys.exit(f"{path}: not a dstrain checkout (no dstrain/learning/trainer.py)")
    results = {name: [] for name in names}
    for k in range(args.rounds):
        for name, path in names.items():
            results[name].append(run_checkout(path, args.data.resolve()))
            print(f"round {k + 1} {name}: {results[name][-1]}", flush=True)

    def commit(path: Path) -> str:
        done = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty"],
                              capture_output=True, text=True)
        return done.stdout.strip() or "?"

    lines = ["# Training step time of two checkouts (`bench/checkout_ab.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; old = `{commit(names['old'])}`, "
             f"new = `{commit(names['new'])}`; `configs/words_debug.yaml`, one process, one torch "
             f"thread; fastest epoch of each run in ms per step, median of {args.rounds} rounds "
             "(each round runs old, then new, in fresh processes).", "",
             "| setting | old ms/step | new ms/step | old / new | sweeps per step (old, new; last round) |",
             "|---|---|---|---|---|"]
    for tag in SETTINGS:
        old, new = (statistics.median(r[tag][0] for r in results[n]) for n in names)
        sweeps = ", ".join(f"{results[n][-1][tag][1]:.1f}" for n in names)
        lines.append(f"| {tag} | {old:.2f} | {new:.2f} | **{old / new:.2f}x** | {sweeps} |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
