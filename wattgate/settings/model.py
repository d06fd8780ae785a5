"""Options and commands: the one settings model every ``wattgate`` command is built from.

An option has one name everywhere: the key ``name`` of the ``--config`` YAML file, the environment
variable ``WATTGATE_NAME`` and the flag ``--name`` (underscores become dashes). The same name means the
same thing, in the same unit, with the same kind and default, in every command that has the option;
shared options are defined once (``wattgate.settings.common``) and commands list them. A command
that must differ in its default says so with ``Option.for_command`` (the README tables show it).

Adding an option to a command is one line in that command's ``options`` tuple: ``--help``, the
environment variable, the YAML key, ``--print-settings`` and the README table all follow from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wattgate.settings.kinds import Kind

ENV_PREFIX = "WATTGATE_"


class SettingsError(Exception):
    """An option is unknown, missing or has a value that cannot be parsed; the message names where it came from."""


@dataclass(frozen=True)
class Option:
    name: str  # snake_case, unit last: read_timeout_s, power_w, sm_clock_mhz
    kind: Kind
    default: Any
    help: str
    required: bool = False
    flag: str = ""  # the flag when it is not --name (a repeatable one is singular: --backend for backends)
    aliases: tuple[str, ...] = ()  # older flag spellings, still accepted
    positional: bool = False  # also given as the command's positional arguments
    in_file: bool = True  # may be a key of the --config file (not --config itself)
    default_text: str = ""  # the default in words, where the value alone would not say it ("all GPUs")
    example: str = ""  # a valid value other than the default (tests; derived from the kind when empty)

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"option name {self.name!r} must be a lower-case identifier")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def main_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.main_flag, *self.aliases)

    def shown_default(self) -> str:
        if self.required:
            return "required"
        return self.default_text or self.kind.show(self.default)

    def for_command(self, *, default: Any = dataclasses.MISSING, required: bool | None = None, **kw: Any) -> Option:
        """This option with another default (or required) in one command; the rest stays as defined."""
        changes: dict[str, Any] = dict(kw)
        if default is not dataclasses.MISSING:
            changes["default"] = default
            changes.setdefault("default_text", "")
        if required is not None:
            changes["required"] = required
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Command:
    """One ``wattgate`` command: its words (``classifier retrain``), help and options, and what runs it."""

    name: str
    summary: str
    options: tuple[Option, ...]
    run: Callable[[Values], int]
    description: str = ""

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"wattgate {self.name}: options {sorted(dupes)} are listed twice")

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)


class Values:
    """A command's settings after parsing: ``values.port``, ``values["port"]``, and where each came from."""

    __slots__ = ("_sources", "_values", "command")

    def __init__(self, command: str, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"wattgate {self.command} has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def source(self, name: str) -> str:
        """``default``, ``file PATH``, ``environment WATTGATE_X`` or ``flag --x``."""
        return str(self._sources.get(name, "default"))

    def __repr__(self) -> str:
        return f"Values({self.command}, {self._values})"
