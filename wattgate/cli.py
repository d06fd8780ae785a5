"""The ``wattgate`` console script: one subcommand per process kind, each registered by its package.

Subcommand modules import only argparse at module level, so ``wattgate --help`` stays fast and a
subcommand pays only for what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wattgate.settings.model import Command

# Each module defines ``COMMANDS`` (``wattgate.settings.model.Command``: options and what runs them) and
# ``register(subparsers)``, which adds them with ``set_defaults(func=...)``; ``func(args)`` returns the exit
# code. Packages not built yet are absent.
SUBCOMMAND_MODULES = (
    "wattgate.gateway.cli",
    "wattgate.gateway.reportcli",
    "wattgate.classifier.cli",
    "wattgate.agent.simcli",
    "wattgate.planner.cli",
    "wattgate.agent.cli",
    "wattgate.simulate.cli",
    "wattgate.demo.cli",
)


def _modules() -> list[ModuleType]:
    found = []
    for name in SUBCOMMAND_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:  # the parent package is not there either
            continue
        found.append(importlib.import_module(name))
    return found


def commands() -> list[Command]:
    """Every command's settings model (``wattgate.settings``), in ``--help`` order."""
    return [c for m in _modules() for c in getattr(m, "COMMANDS", ())]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattgate",
        description="Energy-aware OpenAI-compatible gateway for LLM serving.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _modules():
        module.register(sub)
    return parser


def _version() -> str:
    from wattgate import __version__

    return f"wattgate {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
