"""The command line: every registered command answers --help, and errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxr_fast.cli import COMMANDS, build_parser, main


def test_every_registered_command_is_built():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_explains_each_command(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_console_script_runs_without_network_or_gpu():
    out = subprocess.run([sys.executable, "-m", "cxr_fast.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cxr-fast ")


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
