"""The README's option tables, generated from the settings model, one per command.

Each table sits between ``<!-- options: COMMAND -->`` and ``<!-- /options -->`` in README.md.
``python -m wattgate.settings.readme`` rewrites them; ``--check`` exits 1 if one is out of date (the test
suite checks the same), so the tables never drift from ``--help``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from wattgate.settings.model import Command, Option
from wattgate.settings.parse import options_of

_BLOCK = re.compile(r"(<!-- options: (?P<name>[a-z -]+?) -->\n)(?P<body>.*?)(<!-- /options -->)", re.DOTALL)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ways(o: Option) -> str:
    if o.positional:
        first = f"`{o.name.upper()} ...` (positional)"
    elif o.kind.switch:
        first = f"`{o.main_flag}` / `--no-{o.main_flag[2:]}`"
    else:
        first = f"`{o.main_flag}`"
    first += "".join(f", `{a}`" for a in o.aliases)
    ways = [first, f"`{o.env}`"]
    if o.in_file:
        ways.append(f"`{o.name}:`")
    return " · ".join(ways)


def table(command: Command) -> str:
    lines = [
        "| option: flag · environment · YAML key | default | meaning |",
        "|---|---|---|",
    ]
    for o in options_of(command):
        default = o.shown_default()
        default = "**required**" if o.required else f"`{default}`" if not o.default_text else default
        lines.append(f"| {_ways(o)} | {_cell(default)} | {_cell(o.help)} ({_cell(o.kind.label)}) |")
    return "\n".join(lines) + "\n"


def render(readme: str, commands: list[Command]) -> str:
    by_name = {c.name: c for c in commands}

    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in by_name:
            raise KeyError(f"README.md has an options table for an unknown command {name!r}")
        return m.group(1) + table(by_name[name]) + m.group(4)

    return _BLOCK.sub(replace, readme)


def tables_in(readme: str) -> set[str]:
    return {m.group("name") for m in _BLOCK.finditer(readme)}


def main(argv: list[str] | None = None) -> int:
    from wattgate.cli import commands  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    path = Path(__file__).resolve().parents[2] / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text, commands())
    missing = {c.name for c in commands()} - tables_in(text)
    if "--check" in args:
        if new != text or missing:
            sys.stderr.write(
                f"README.md option tables are out of date (missing: {sorted(missing) or 'none'}); run "
                "python -m wattgate.settings.readme\n"
            )
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    if missing:
        sys.stderr.write(f"no table yet for {sorted(missing)}: add <!-- options: NAME --><!-- /options --> blocks\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
