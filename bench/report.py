"""Where every benchmark script's Markdown result goes: printed, and written to its results file
(bench/results/*.md, which README.md links), the folder made if missing."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """The CPU's model name and core count (results differ a lot between CPU generations)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def write_report(lines, out) -> None:
    """Print the report and write it to `out` ("-": print only)."""
    text = "\n".join(lines)
    print(text)
    if str(out) != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
