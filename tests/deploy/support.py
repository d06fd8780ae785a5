"""Helpers for the deployment-file tests: repo paths, compose-style interpolation, the .env file, and a
check of a container's command line against the real ``wattgate`` argparse parser."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from wattgate.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

# The branch (and issue) that brings each subcommand, for skip reasons until it is merged.

# ``$$`` (a literal dollar), ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``$VAR``.
_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty, as docker compose would refuse it."""


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a docker compose ``.env`` file; comments and blank lines ignored."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path.name}:{n}: not KEY=value: {line!r}")
        env[key] = value
    return env


def compose_variables(text: str) -> set[str]:
    """Every variable a compose file interpolates (``$$`` escapes and comment lines are not variables)."""
    names = set()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for m in _COMPOSE_VAR.finditer(code):
        name = m.group("braced") or m.group("named")
        if name:
            names.add(name)
    return names


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """What docker compose makes of one string value, given the variables in ``env``."""

    def sub(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in {":-", "-"}:
            use_default = unset_or_empty if op == ":-" else current is None
            return arg if use_default else str(current)
        if op in {":?", "?"}:
            if unset_or_empty if op == ":?" else current is None:
                raise InterpolationError(f"{name}: {arg}")
            return str(current)
        if op in {":+", "+"}:
            present = not unset_or_empty if op == ":+" else current is not None
            return arg if present else ""
        return current or ""

    return _COMPOSE_VAR.sub(sub, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def wattgate_parser() -> argparse.ArgumentParser:
    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_argv(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name) as the real CLI would; an AssertionError names the
    argparse complaint (unknown flag, missing required flag, bad choice) instead of a SystemExit."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`wattgate {' '.join(argv)}` is rejected by the CLI: {err.getvalue().strip()}") from exc


def require_subcommand(parser: argparse.ArgumentParser, name: str) -> None:
    """Fail (never skip) when ``name`` is not a wattgate subcommand: every command the manifests run exists."""
    if name not in subcommands(parser):
        pytest.fail(f"`wattgate {name}` is not a wattgate subcommand")


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)
