"""Slurm: the rendered template against a golden file, and real jobs on a one-node Slurm cluster.

The `slurm` tests start munged, slurmctld and slurmd (Debian's slurm-wlm and munge; `.ci/run`
installs them, and libpmix-dev for srun's pmix plugin) in the foreground as child processes,
submit the project's template with `dstrain submit --wait`, and stop exactly the processes they
started.  Without the Slurm binaries they skip, saying why; the default launch (srun --mpi=pmix)
also skips where the plugin cannot start tasks, except in CI (CI set), where it must.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstrain.tasks.words import generate_words
from dstrain.cli import main
from helpers import ROOT, dstrain

GOLDEN = Path(__file__).parent / "golden" / "submit_dry_run.sbatch"
BIN = str(Path(sys.executable).parent)


def test_dry_run_matches_the_golden_file(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["submit", "--config", "configs/words_debug.yaml", "--nodes", "2",
                 "--ntasks-per-node", "4", "--gpus-per-node", "4", "--partition", "gpu",
                 "--time", "02:00:00", "--launcher", "mpirun", "--run-dir", "runs/cluster",
                 "--set", "train.epochs=20", "model.hidden=[64]", "--dry-run"]) == 0
    assert capsys.readouterr().out == GOLDEN.read_text()


def test_submit_rejects_bad_options_before_anything_is_queued(capsys):
    config = str(ROOT / "configs" / "words_debug.yaml")
    assert main(["submit", "--config", config, "--time", "soon", "--dry-run"]) == 2
    assert "--time 'soon'" in capsys.readouterr().err
    assert main(["submit", "--config", config, "--set", "train.lr=-1", "--dry-run"]) == 2
    assert "train.lr" in capsys.readouterr().err
    with pytest.raises(SystemExit):            # argparse's own choice check
        main(["submit", "--config", config, "--launcher", "ssh", "--dry-run"])
    assert "invalid choice: 'ssh'" in capsys.readouterr().err


SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
MISSING = [b for b in SLURM_BINARIES if shutil.which(b) is None and
           not Path("/usr/sbin", b).exists()]


def _which(binary):
    return shutil.which(binary) or str(Path("/usr/sbin", binary))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if MISSING:
        pytest.skip(f"Slurm is not installed ({', '.join(MISSING)} missing): "
                    "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root (SlurmUser=root)")
    work = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "log"):
        (work / folder).mkdir()
    host = platform.node()
    conf = work / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=dstrain-test", f"SlurmctldHost={host}", "AuthType=auth/munge",
        "CredType=cred/munge", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SlurmUser=root", "SlurmdUser=root", "MpiDefault=none",
        f"StateSaveLocation={work}/state", f"SlurmdSpoolDir={work}/spool",
        f"SlurmctldPidFile={work}/slurmctld.pid", f"SlurmdPidFile={work}/slurmd.pid",
        f"SlurmctldLogFile={work}/log/slurmctld.log", f"SlurmdLogFile={work}/log/slurmd.log",
        "ReturnToService=2",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    started = []
    try:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            started.append(subprocess.Popen([_which("munged"), "--foreground", "--force"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
        for daemon in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([_which(daemon), "-D", "-f", str(conf)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the test Slurm cluster did not come up: sinfo says {state!r}; "
                        f"logs in {work}/log")
        yield env
    finally:
        for process in reversed(started):   # exactly the daemons this fixture started
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("slurm-data") / "words.h5"
    generate_words(path, num_train=60, num_val=20, num_test=10, seed=4, progress=False)
    return path


def submit(cluster, run_dir, *sets, config="configs/words_debug.yaml", launcher="mpirun", env=None):
    """`dstrain submit --wait` of a 2-task job; launcher None: the default (srun)."""
    env = {**cluster, "PYTHON": sys.executable, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    return dstrain("submit", "--config", config, "--nodes", "1", "--ntasks-per-node", "2",
                   *(["--launcher", launcher] if launcher else []), "--time", "10",
                   "--run-dir", str(run_dir), "--wait", "--set", *sets, env=env, timeout=300)


def job_logs(run_dir) -> tuple[str, str]:
    """The job's stdout and stderr files (slurm-JOB.out, .err)."""
    return tuple("".join(p.read_text() for p in Path(run_dir).glob(f"slurm-*.{kind}"))
                 for kind in ("out", "err"))


@pytest.fixture(scope="module")
def pmix(cluster):
    """Why `srun --mpi=pmix` cannot start a task on the test cluster, or None when it can."""
    done = subprocess.run(["srun", "--mpi=pmix", "-n", "1", "true"], env=cluster,
                          capture_output=True, text=True, timeout=120)
    first = (done.stderr.strip().splitlines() or ["no message"])[0]
    return None if done.returncode == 0 else \
        f"srun --mpi=pmix cannot start tasks here ({first}): apt-get install libpmix-dev"


@pytest.mark.slurm
@pytest.mark.parametrize("launcher", [None, "mpirun"], ids=["default-srun", "mpirun"])
def test_two_task_training_job_succeeds_with_distinct_ranks(cluster, pmix, small_data, tmp_path,
                                                            launcher):
    if launcher is None and pmix and not os.environ.get("CI"):
        pytest.skip(pmix)
    run_dir = tmp_path / "run"
    done = submit(cluster, run_dir, f"data.path={small_data}", "data.generate=false",
                  "train.epochs=2", "train.pretrain_epochs=1", "model.hidden=[16]",
                  launcher=launcher)
    out, err = job_logs(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr + out + err
    assert "ended with exit code 0" in done.stdout
    assert f"launcher {launcher or 'srun'}" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["ranks"] == 2 for r in rows)   # written once, by rank 0
    assert sum(line.startswith("epoch") for line in out.splitlines()) == 2
    # stderr holds each rank's start line and nothing else: no launcher or plugin noise
    assert sorted(line.split(" (")[0] for line in err.splitlines()) == \
        ["dstrain: rank 0 of 2", "dstrain: rank 1 of 2"], err


@pytest.mark.slurm
def test_an_srun_plugin_that_cannot_start_tasks_stops_the_job_with_one_line(cluster, tmp_path):
    run_dir = tmp_path / "run"
    done = submit(cluster, run_dir, "train.max_steps=1", launcher=None,
                  env={"SRUN_MPI": "no-such-plugin"})
    out, err = job_logs(run_dir)
    assert done.returncode != 0 and "ended with exit code 2" in done.stdout, done.stdout + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dstrain: srun --mpi=no-such-plugin cannot start the tasks (")
    for fix in ("install the PMIx library", "libpmix-dev", "restart slurmd", "--launcher mpirun"):
        assert fix in lines[0], lines[0]
    assert "epoch" not in out and not (run_dir / "metrics.jsonl").exists()   # nothing trained


@pytest.mark.slurm
def test_a_users_own_model_trains_as_a_job(cluster, tmp_path):
    """examples/ring_crf.py, named in configs/ring_example.yaml: data generated by rank 0."""
    run_dir = tmp_path / "run"
    done = submit(cluster, run_dir, f"data.path={tmp_path / 'ring.h5'}", "data.num_train=120",
                  "data.num_val=30", "data.num_test=10", "train.epochs=2",
                  "train.pretrain_epochs=1", "model.hidden=8", config="configs/ring_example.yaml")
    out, err = job_logs(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr + out + err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["unary", "joint"] and rows[-1]["ranks"] == 2
    assert "val_variable_accuracy" in rows[-1]


@pytest.mark.slurm
def test_a_failing_job_returns_non_zero_through_sbatch_wait(cluster, tmp_path):
    done = submit(cluster, tmp_path / "run", f"data.path={tmp_path / 'missing.h5'}",
                  "data.generate=false")
    assert done.returncode != 0
    out, err = job_logs(tmp_path / "run")
    assert "dstrain data words" in err        # the job's own error, one line per rank
