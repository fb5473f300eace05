"""Where every benchmark script's Markdown result goes: printed, and written to its results file
(bench/results/*.md, which README.md links), the folder made if missing."""
from __future__ import annotations

from pathlib import Path


def write_report(lines, out) -> None:
    """Print the report and write it to `out` ("-": print only)."""
    text = "\n".join(lines)
    print(text)
    if str(out) != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
