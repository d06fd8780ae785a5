from __future__ import annotations

import subprocess
import sys

from wattgate.cli import main


def test_help_lists_subcommands_and_exits_cleanly() -> None:
    out = subprocess.run([sys.executable, "-m", "wattgate", "--help"], capture_output=True, text=True, check=True)
    assert "usage: wattgate" in out.stdout


def test_no_subcommand_returns_2() -> None:
    assert main([]) == 2
