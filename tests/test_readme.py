"""The README's Python examples run as written, and its test command is the one CI runs."""
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def commands(text: str) -> list[list[str]]:
    """The simple commands of shell text (split at newlines, &&, ||, ;) as lists of words;
    comments dropped, continued lines joined."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:   # a quote spanning lines: not a command line of its own
            continue
        command = []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


def pytest_command(command: list[str]) -> list[str] | None:
    """`python -m pytest ...` (or `pytest ...`) within a command, e.g. after `timeout 2400`."""
    for start, word in enumerate(command):
        if command[start:start + 3] == ["python", "-m", "pytest"] or word == "pytest":
            return command[start:]
    return None


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", readme, re.S))
    in_readme = [c for c in map(pytest_command, commands(shell)) if c]
    assert in_readme, "README.md has no pytest command in a bash block"
    ci = (ROOT / ".ci" / "run").read_text()
    in_ci = [c for c in map(pytest_command, commands(ci)) if c]
    assert in_readme[0] in in_ci, (in_readme[0], in_ci)     # run by CI, not only mentioned
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0
