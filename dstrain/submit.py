"""`dstrain submit`: render the Slurm template for a config and submit it with sbatch.

The template (``dstrain/templates/train.sbatch``, also at ``launch/slurm/train.sbatch``) is a
working sbatch script on its own; rendering sets its ``#SBATCH`` values, enables the site lines
asked for, and fixes the script's arguments (config and overrides), so the printed script is
exactly what runs.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from .errors import InputError

# how the job starts its ranks: srun with Slurm's MPI plugin (pmix), or Open MPI's mpirun
Launcher = Literal["srun", "mpirun"]
LAUNCHERS = typing.get_args(Launcher)


@dataclass
class SubmitOptions:
    config: str
    nodes: int = 1
    ntasks_per_node: int = 2
    gpus_per_node: int = 0
    time: str = "01:00:00"
    partition: str | None = None
    launcher: Launcher = "srun"
    overrides: tuple[str, ...] = ()
    run_dir: str = "runs/words"
    job_name: str = "dstrain"

    def __post_init__(self):
        for name in ("nodes", "ntasks_per_node"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise InputError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", self.time):
            raise InputError(f"--time {self.time!r}: expected Slurm's [D-]HH:MM:SS, HH:MM or minutes")
        if self.launcher not in LAUNCHERS:
            raise InputError(f"--launcher {self.launcher!r}: expected one of {', '.join(LAUNCHERS)}")


def template_text() -> str:
    return resources.files("dstrain").joinpath("templates/train.sbatch").read_text()


def render(options: SubmitOptions) -> str:
    """The sbatch script for these options."""
    values = {"job-name": options.job_name, "nodes": options.nodes,
              "ntasks-per-node": options.ntasks_per_node, "time": options.time,
              "output": f"{options.run_dir}/slurm-%j.out", "error": f"{options.run_dir}/slurm-%j.err"}
    text = template_text()
    for key, value in values.items():
        text, count = re.subn(rf"^#SBATCH --{key}=.*$", f"#SBATCH --{key}={value}", text, flags=re.M)
        assert count == 1, f"template lacks #SBATCH --{key}"
    if options.partition:
        text = re.sub(r"^##SBATCH --partition=.*$", f"#SBATCH --partition={options.partition}",
                      text, flags=re.M)
    if options.gpus_per_node:
        text = re.sub(r"^##SBATCH --gpus-per-node=.*$",
                      f"#SBATCH --gpus-per-node={options.gpus_per_node}", text, flags=re.M)
    arguments = " ".join(shlex.quote(a) for a in (options.config, *(
        ["--set", *options.overrides] if options.overrides else []), "--run-dir", options.run_dir))
    fixed = (f"set -euo pipefail\n# rendered by `dstrain submit`: the config and overrides of this job\n"
             f"set -- {arguments}\nexport DSTRAIN_LAUNCHER=${{DSTRAIN_LAUNCHER:-{options.launcher}}}\n")
    return text.replace("set -euo pipefail\n", fixed, 1)


def submit(options: SubmitOptions, wait: bool = False) -> tuple[str, int]:
    """Write the script into the run directory and sbatch it; returns (job id, sbatch's code)."""
    if shutil.which("sbatch") is None:
        raise InputError("sbatch is not on PATH: is this a Slurm login node? "
                                "(`dstrain submit --dry-run` prints the script without Slurm)")
    run_dir = Path(options.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "submit.sbatch"
    script.write_text(render(options))
    command = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + [str(script)]
    done = subprocess.run(command, capture_output=True, text=True)
    job = done.stdout.strip().split(";")[0]
    if not job:
        raise RuntimeError(f"sbatch failed: {done.stderr.strip()}")
    return job, done.returncode
