"""bench/gpu_check.sh is run once, on a GPU machine lent for minutes: its flow is checked here,
on the CPU (--emulate: the kernels emulated, tiny sizes), so that run is spent on measuring."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_end_to_end_in_emulation(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--emulate"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["rows"]
    assert not report["failed"] and {r["step"] for r in rows} == {"a", "b", "c", "d", "e"}
    checks = [r for r in rows if r["step"] == "a" or "==" in r["check"] or r["step"] == "d"]
    assert len(checks) >= 20 and all(r["status"] == "PASS" for r in checks), checks
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
