"""Shared libraries compiled from the package's own C and C++ sources on first use.

A library is built once per machine and source: the compiler's output goes to
``$XDG_CACHE_HOME/dstrain/<kind>/`` (default ``~/.cache``), named by a digest of the sources, the
command and the compiler, and is renamed into place atomically, so ranks or test processes that
build at the same time never load half a file.  Used by the CPU kernels of the BP engine
(``dstrain.inference.cpu_kernels``) and the CUDA kernels' CPU emulator (``dstrain.gpu.emulator``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


class BuildError(RuntimeError):
    """The compiler is missing or failed; the message holds its command and output."""


def cache_dir(kind: str) -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dstrain" / kind


def shared_library(kind: str, stem: str, inputs: list[Path], command: list[str]) -> ctypes.CDLL:
    """Load the library that `command` builds (its output path given as the placeholder
    ``{out}``), compiling it first unless the cache has one for these `inputs` and command."""
    text = b"".join(p.read_bytes() for p in inputs) + "\0".join(command).encode()
    digest = hashlib.sha256(text).hexdigest()[:16]
    target = cache_dir(kind) / f"{stem}-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            argv = [str(built) if a == "{out}" else a for a in command]
            try:
                done = subprocess.run(argv, capture_output=True, text=True)
            except OSError as error:   # no such compiler
                raise BuildError(f"{' '.join(argv)}: {error}") from None
            if done.returncode != 0:
                raise BuildError(f"{' '.join(argv)} failed:\n{done.stderr}")
            os.replace(built, target)
    return ctypes.CDLL(str(target))
