"""The `dstrain` command."""
import pytest

from dstrain.cli import main


def test_info_lists_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dstrain ") and "numpy" in out and "mpi4py" in out


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2
