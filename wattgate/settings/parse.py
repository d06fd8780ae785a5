"""From a command line, the environment and a YAML file to one command's ``Values``, parsed once at start.

Precedence, lowest first: the option's default < the ``--config`` YAML file < ``WATTGATE_<OPTION>``
environment variables < flags. An empty environment variable counts as not set. Errors name where
the value came from (``--port``, ``WATTGATE_PORT``, ``gw.yaml: port``):

- a ``WATTGATE_*`` variable that is no option of any wattgate command (nor one of ``OTHER_VARIABLES``,
  nor a variable another option names, such as ``api_keys_env``'s) is an error: a misspelt variable
  must not leave a gateway open or a default in force without a word;
- a file key that is no option of any command is an error; one that belongs to another command only
  is ignored with a warning (one file may serve several commands), as the environment's are silently;
- a value its kind cannot parse is an error; so is a required option with no value.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from wattgate.settings.kinds import path
from wattgate.settings.model import ENV_PREFIX, Command, Option, SettingsError, Values

CONFIG = Option(
    "config",
    path(),
    None,
    "YAML file of options: each key an option name as in the README tables (flags and WATTGATE_* win over it)",
    in_file=False,
    example="wattgate.yaml",
)

# WATTGATE_* variables that are not options: read by the deployment files and the development tools
OTHER_VARIABLES = frozenset(
    {
        "WATTGATE_IMAGE",  # docker-compose.yml: the gateway and planner image
        "WATTGATE_AGENT_IMAGE",  # docker-compose.yml: the agent image
        "WATTGATE_LITELLM_BIN",  # bench/litellm_leg.py: another litellm executable
        "WATTGATE_BENCH_ROOT",  # bench/planner.py: whose wattgate package to time
        "WATTGATE_SAVE_SCREENSHOT",  # tests/demo: keep the dashboard screenshot
    }
)

EPILOG = (
    "Every option is also the environment variable WATTGATE_<OPTION> (e.g. --read-timeout-s is "
    "WATTGATE_READ_TIMEOUT_S) and the key <option> of the --config YAML file (read_timeout_s). Flags win over "
    "the environment, which wins over the file. --print-settings prints what this command would run with."
)


def options_of(command: Command) -> tuple[Option, ...]:
    return (CONFIG, *command.options)


def add_command(subparsers: Any, command: Command, word: str | None = None) -> argparse.ArgumentParser:
    """Add ``command`` to argparse: one argument per option, all read as text and parsed by ``resolve``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        word or command.name,
        help=command.summary,
        description=command.description or command.summary,
        epilog=EPILOG,
        allow_abbrev=False,
    )
    for o in options_of(command):
        text = f"{o.help} [{o.kind.label}; default: {o.shown_default()}]".replace("%", "%%")
        if o.positional:
            p.add_argument(o.name, nargs="*", default=None, metavar=o.name.upper(), help=text)
        elif o.kind.switch:
            p.add_argument(*o.flags, dest=o.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif o.kind.repeat:
            p.add_argument(*o.flags, dest=o.name, action="append", default=None, metavar=o.kind.metavar, help=text)
        else:
            p.add_argument(*o.flags, dest=o.name, default=None, metavar=o.kind.metavar, help=text)
    p.add_argument(
        "--print-settings",
        action="store_true",
        help="print the settings this command would run with (each value and where it came from) as JSON; exit",
    )
    p.set_defaults(func=functools.partial(run_command, command))
    return p


def given_options(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (argparse leaves None, or [] for positionals, for the others)."""
    return {o.name: getattr(args, o.name) for o in options_of(command) if getattr(args, o.name, None) not in (None, [])}


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Parse the settings once; a bad one ends the command with one line on stderr and exit status 2."""
    given = given_options(command, args)
    try:
        values = resolve(command, given, os.environ, known_env=known_env())
    except SettingsError as exc:
        sys.stderr.write(f"wattgate {command.name}: error: {exc}\n")
        return 2
    if getattr(args, "print_settings", False):
        sys.stdout.write(json.dumps(describe(command, values), indent=1) + "\n")
        return 0
    return command.run(values)


def describe(command: Command, values: Values) -> dict[str, Any]:
    """What ``--print-settings`` prints: per option the value as text and its source."""
    return {
        "command": command.name,
        "settings": {
            o.name: {"value": o.kind.show(values[o.name]), "source": values.source(o.name)} for o in options_of(command)
        },
    }


def known_env() -> frozenset[str]:
    """Every option's variable across all commands, and ``OTHER_VARIABLES``."""
    return frozenset({o.env for o in all_options()} | OTHER_VARIABLES)


def all_options() -> list[Option]:
    from wattgate.cli import commands  # noqa: PLC0415  (the command list lives with the console script)

    return [o for c in commands() for o in options_of(c)]


def resolve(
    command: Command,
    given: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    known_env: Iterable[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Values:
    """The command's values: defaults, then the config file, the environment, the flags (``given``: the
    options given on the command line, as argparse left them: text, a list of texts, or a bool)."""
    opts = {o.name: o for o in options_of(command)}
    values: dict[str, Any] = {name: o.default for name, o in opts.items()}
    sources: dict[str, str] = {}

    def put(o: Option, raw: Any, where: str, source: str) -> None:
        try:
            values[o.name] = o.kind.convert(raw)
        except ValueError as exc:
            raise SettingsError(f"{where}: {exc}") from None
        sources[o.name] = source

    config_flag = given.get("config")
    config_env = (env.get(CONFIG.env) or "").strip()
    if config_flag is not None:
        put(CONFIG, config_flag, CONFIG.main_flag, f"flag {CONFIG.main_flag}")
    elif config_env:
        put(CONFIG, config_env, CONFIG.env, f"environment {CONFIG.env}")
    if values["config"] is not None:
        file = values["config"]
        for key, raw in _read_file(file, command, opts, warn).items():
            put(opts[key], raw, f"{file}: {key}", f"file {file}")
    for name, o in opts.items():
        if name != "config" and (env.get(o.env) or "").strip():
            put(o, env[o.env], o.env, f"environment {o.env}")
    for name, flag_value in given.items():
        if name != "config":
            o = opts[name]
            raw = flag_value
            if o.kind.repeat and isinstance(raw, list):  # --api-key a --api-key b,c reads as "a,b,c"
                raw = o.kind.joiner.join(raw)
            put(o, raw, o.main_flag if not o.positional else name.upper(), f"flag {o.main_flag}")
    _check_env_names(env, opts.values(), values, known_env)
    for name, o in opts.items():
        if o.required and values[name] in (None, "", ()):
            how = f"{o.main_flag}" if not o.positional else f"{name.upper()} (positional)"
            raise SettingsError(f"{how} is required (or {o.env}, or {name}: in the --config file)")
    return Values(command.name, values, sources)


def _check_env_names(
    env: Mapping[str, str], opts: Iterable[Option], values: Mapping[str, Any], known: Iterable[str] | None
) -> None:
    allowed = set(known if known is not None else ()) | {o.env for o in opts} | OTHER_VARIABLES
    for o in opts:
        if o.kind.names_env is not None and values[o.name] is not None:
            allowed |= set(o.kind.names_env(values[o.name]))
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(f"unknown environment variable {name}: no wattgate option is called that{hint}")


def _read_file(
    path: Path, command: Command, opts: Mapping[str, Option], warn: Callable[[str], None] | None
) -> dict[str, Any]:
    import yaml  # noqa: PLC0415  (only when a file is given)

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError(f"config file {path} is not valid YAML{at}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SettingsError(f"config file {path} must be a mapping of option: value, got {type(doc).__name__}")
    out: dict[str, Any] = {}
    everywhere = {o.name: o for o in all_options()}
    for key, raw in doc.items():
        if not isinstance(key, str):
            raise SettingsError(f"{path}: option names are text, got {key!r}")
        o = opts.get(key)
        if o is not None and o.in_file:
            out[key] = raw
        elif o is not None:
            raise SettingsError(f"{path}: {key} cannot be set in a config file")
        elif key in everywhere:
            (warn or _warn)(f"wattgate {command.name}: {path}: {key} is not an option of this command; ignored")
        else:
            close = difflib.get_close_matches(key, sorted(everywhere), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(f"{path}: unknown option {key!r}{hint}")
    return out


def _warn(message: str) -> None:
    sys.stderr.write(message + "\n")


def parse(command: Command, argv: list[str], env: Mapping[str, str] | None = None) -> Values:
    """Parse ``argv`` (the command's own arguments) as ``wattgate <command>`` would; for tests and embedding."""
    parser = argparse.ArgumentParser(prog="wattgate", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    add_command(sub, command, "cmd")
    args = parser.parse_args(["cmd", *argv])
    return resolve(command, given_options(command, args), os.environ if env is None else env, known_env=known_env())


__all__ = ["CONFIG", "EPILOG", "OTHER_VARIABLES", "add_command", "parse", "resolve", "run_command"]
