"""Kinds of option values: how a flag's or an environment variable's text, or a YAML value, becomes the value.

Each kind's ``convert`` takes text (flags, environment) or what YAML gave (a number, a list, a mapping)
and returns the value, or raises ``ValueError`` saying what was expected; the caller adds where the
value came from. ``show`` writes a value back as text (defaults in ``--help`` and in the README, and
what ``--print-settings`` prints).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _show_value(value: Any) -> str:
    return _show(value)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list, frozenset)):
        return ",".join(_show(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Kind:
    """What values of an option look like (``label``, shown in help) and how to read and write them."""

    label: str
    convert: Callable[[Any], Any]
    show: Callable[[Any], str] = field(default=_show_value)
    metavar: str = "VALUE"
    switch: bool = False  # a boolean: the flag is --name / --no-name
    repeat: bool = False  # a list: the flag may be given several times, each adding items
    joiner: str = " "  # a repeated flag's texts are joined with this and parsed as one text
    # environment variables a value names (``api_keys_env``): not unknown WATTGATE_* variables
    names_env: Callable[[Any], Iterable[str]] | None = None


def _bounds(
    value: float, minimum: float | None, maximum: float | None, above: float | None, below: float | None = None
) -> None:
    if above is not None and not value > above:
        raise ValueError(f"must be > {above:g}, got {value:g}")
    if below is not None and not value < below:
        raise ValueError(f"must be < {below:g}, got {value:g}")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be <= {maximum:g}, got {value:g}")


def _range_label(
    base: str, minimum: float | None, maximum: float | None, above: float | None, below: float | None = None
) -> str:
    if above is not None and below is not None:
        return f"{base} > {above:g}, < {below:g}"
    if minimum is not None and below is not None:
        return f"{base} >= {minimum:g}, < {below:g}"
    if minimum is not None and maximum is not None:
        return f"{base} {minimum:g}..{maximum:g}"
    if above is not None:
        return f"{base} > {above:g}" + (f", <= {maximum:g}" if maximum is not None else "")
    if minimum is not None:
        return f"{base} >= {minimum:g}"
    return base


def integer(minimum: int | None = None, maximum: int | None = None) -> Kind:
    def convert(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"expected an integer, got {raw!r}")
        try:
            value = int(raw.strip()) if isinstance(raw, str) else raw
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        _bounds(value, minimum, maximum, None)
        return value

    return Kind(_range_label("integer", minimum, maximum, None), convert, metavar="N")


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
) -> Kind:
    def convert(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        _bounds(value, minimum, maximum, above, below)
        return value

    return Kind(_range_label("number", minimum, maximum, above, below), convert, metavar="X")


def text(*, nonempty: bool = False, check: Callable[[str], None] | None = None, label: str = "text") -> Kind:
    """A string (a YAML number is taken as its text); ``check`` raises ValueError for a bad one."""

    def convert(raw: Any) -> str:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError(f"expected text, got {raw!r}")
        value = str(raw).strip()
        if nonempty and not value:
            raise ValueError("must not be empty")
        if check is not None and value:
            check(value)
        return value

    return Kind(label, convert, metavar="TEXT")


def path() -> Kind:
    """A file or directory path (``~`` expanded); empty: none."""

    def convert(raw: Any) -> Path | None:
        value = text().convert(raw)
        return Path(value).expanduser() if value else None

    return Kind("path", convert, metavar="PATH")


def boolean() -> Kind:
    def convert(raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"expected true or false (also 1/0, yes/no, on/off), got {raw!r}")

    return Kind("true|false", convert, switch=True)


def choice(*values: str, aliases: Mapping[str, str] | None = None) -> Kind:
    """One of ``values``, case-insensitive; ``aliases`` map older spellings to one of them."""
    known = {v.lower(): v for v in values} | {k.lower(): v for k, v in (aliases or {}).items()}

    def convert(raw: Any) -> str:
        if isinstance(raw, str) and raw.strip().lower() in known:
            return known[raw.strip().lower()]
        raise ValueError(f"expected one of {', '.join(values)}, got {raw!r}")

    return Kind("|".join(values), convert, metavar="{" + ",".join(values) + "}")


def listof(item: Kind, sep: str | None = ",", *, nonempty: bool = False, repeat: bool = False, label: str = "") -> Kind:
    """Items separated by ``sep`` in text (None: by whitespace, shell-quoted), a list in YAML."""

    def convert(raw: Any) -> tuple[Any, ...]:
        if isinstance(raw, str):
            if sep is None:
                try:
                    parts: list[Any] = shlex.split(raw)
                except ValueError as exc:
                    raise ValueError(f"cannot split {raw!r}: {exc}") from None
            else:
                parts = [p for p in (x.strip() for x in raw.split(sep)) if p]
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            raise ValueError(f"expected a list, got {raw!r}")
        values = tuple(item.convert(p) for p in parts)
        if nonempty and not values:
            raise ValueError("must not be empty")
        return values

    joiner = {None: " ", ",": ","}.get(sep, sep or " ")

    def show(value: Any) -> str:
        return joiner.join(item.show(v) for v in value) if value else "none"

    separated = "space" if sep is None else f"'{sep}'"
    metavar = item.metavar if repeat else f'"{item.metavar} ..."' if sep is None else f"{item.metavar}{joiner}..."
    return Kind(
        label or f"{item.label}, {separated}-separated", convert, show, metavar=metavar, repeat=repeat, joiner=joiner
    )


def optional(kind: Kind, label: str = "") -> Kind:
    """``kind`` or none (an empty string, or YAML null)."""

    def convert(raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return kind.convert(raw)

    def show(value: Any) -> str:
        return "none" if value is None else kind.show(value)

    return dataclasses.replace(kind, label=label or kind.label, convert=convert, show=show)


def custom(label: str, convert: Callable[[Any], Any], show: Callable[[Any], str] | None = None, **kw: Any) -> Kind:
    return Kind(label, convert, show or _show, **kw)
