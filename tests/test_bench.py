"""The benchmarks' own logic, checked on the CPU.  bench/gpu_check.sh is run once, on a GPU machine
lent for minutes: its flow is checked here (--emulate: the kernels emulated, tiny sizes), so that
run is spent on measuring."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from helpers import ROOT, run


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_in_emulation(tmp_path):
    env = {"OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = run(["bash", "bench/gpu_check.sh", "--emulate"], env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["rows"]
    assert not report["failed"] and {r["step"] for r in rows} == set("abcdefg")
    checks = [r for r in rows if r["step"] in "adg" or "==" in r["check"]]
    assert len(checks) >= 24 and all(r["status"] == "PASS" for r in checks), checks
    for task in ("words", "tagging", "segmentation"):   # every task's throughput, both sides
        assert any(r["check"].startswith(f"{task}: training throughput") for r in rows), task
    grids = [r for r in rows if r["step"] == "b" and r["check"].startswith("4-connected grid")]
    assert any("==" in r["check"] and r["status"] == "PASS" for r in grids), grids
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")


def test_blend_vs_converge_speedup_reads_the_curves():
    """The bench's verdict: converge's seconds at its last (or n-th) epoch over the seconds at
    which blend first reaches converge's accuracy there; None if it never does."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from blend_vs_converge import mean_curve, speedup
    finally:
        sys.path.remove(str(ROOT / "bench"))
    converge = [(3.0, 0.20, 5.0), (6.0, 0.30, 9.0), (9.0, 0.35, 12.0)]
    blend = [(1.0, 0.10, 1.0), (2.0, 0.25, 1.0), (3.0, 0.34, 1.0), (4.0, 0.36, 1.0)]
    assert speedup(blend, converge) == 9.0 / 4.0              # 0.35 first reached at 4 s
    assert speedup(blend, converge, epochs=2) == 6.0 / 3.0    # 0.30 first reached at 3 s
    assert speedup(blend[:3], converge) is None               # never reaches 0.35
    other = [(t + 1.0, accuracy - 0.1, sweeps + 1.0) for t, accuracy, sweeps in converge]
    mean = mean_curve([converge, other[:2]])                  # as long as the shortest run
    assert len(mean) == 2 and mean[1] == (6.5, 0.25, 9.5)


def test_readme_lists_every_benchmark_and_links_only_results_that_exist():
    """README's benchmark list names every script under bench/ and links every results file;
    every results file it links exists."""
    readme = (ROOT / "README.md").read_text()
    helpers = {"report.py", "gpu_check.py"}   # report.py writes results; gpu_check.sh runs gpu_check.py
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")} - helpers
    missing = sorted(name for name in scripts if name not in readme)
    assert not missing, f"bench scripts README.md does not mention: {missing}"
    linked = set(re.findall(r"\]\((bench/results/[^)]+)\)", readme))
    assert all((ROOT / path).is_file() for path in linked), \
        sorted(p for p in linked if not (ROOT / p).is_file())
    results = {f"bench/results/{p.name}" for p in (ROOT / "bench" / "results").glob("*.md")}
    assert not results - linked, f"results files README.md does not link: {sorted(results - linked)}"
