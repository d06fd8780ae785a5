from __future__ import annotations

import argparse
import subprocess
import sys

from wattgate.cli import build_parser, main


def test_help_lists_subcommands_and_exits_cleanly() -> None:
    out = subprocess.run([sys.executable, "-m", "wattgate", "--help"], capture_output=True, text=True, check=True)
    assert "usage: wattgate" in out.stdout


def test_no_subcommand_returns_2() -> None:
    assert main([]) == 2


def _every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's parser and its nested ones (``classifier retrain``), named as typed."""
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), sub))
                    walk(f"{prefix} {name}", sub)

    walk("", build_parser())
    return found


def test_every_subcommand_formats_its_help() -> None:
    # A stray '%' in any help string makes argparse raise on --help; format each one in-process.
    parsers = _every_parser()
    assert {"simulate", "gateway", "agent", "planner", "demo"} <= {name for name, _ in parsers}
    for name, parser in parsers:
        text = parser.format_help()
        assert f"wattgate {name}" in text, name
