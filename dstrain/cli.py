"""The `dstrain` command.  So far: `dstrain info` (what this installation can use).

Training, evaluation, data generation and Slurm submission arrive with their issues.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:   # a missing or broken optional package is a finding, not a crash
        return f"not available ({type(error).__name__})"


def info() -> int:
    import dstrain
    print(f"dstrain {dstrain.__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module in ("numpy", "torch", "h5py", "mpi4py", "cupy"):
        print(f"  {module:8s} {_version(module)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dstrain", description="Deep structured models, sample-parallel.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions of dstrain and the libraries it can use")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
