"""``wattgate report``: energy, tokens, J/token and carbon per model and API key, from the gateways' Redis minutes."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, text
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command


def _duration(value: str) -> None:
    from wattgate.gateway.energy_report import parse_duration_s  # noqa: PLC0415  (only when one is given)

    parse_duration_s(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "since",
        dataclasses.replace(text(nonempty=True, check=_duration, label="duration N[s|m|h|d]"), metavar="DURATION"),
        "24h",
        "window: the last 90s, 30m, 24h, 7d",
        example="30m",
    ),
    c.REDIS_URL,
    c.REDIS_PREFIX,
    Option("csv", boolean(), False, "CSV on stdout instead of a table"),
)


def run(args: Values) -> int:
    import asyncio  # noqa: PLC0415  (command modules import only the settings model at module level)
    import time  # noqa: PLC0415

    from wattgate.gateway.energy_report import aggregate, parse_duration_s, to_csv, to_table  # noqa: PLC0415
    from wattgate.gateway.store import read_energy_minutes  # noqa: PLC0415
    from wattgate.planner.contract import Keys  # noqa: PLC0415

    url = args.redis_url or c.DEFAULT_REDIS_URL
    window_s = parse_duration_s(args.since)  # checked when the settings were parsed
    now = time.time()
    try:
        minutes = asyncio.run(
            read_energy_minutes(url, Keys(args.redis_prefix), int(now - window_s) // 60, int(now) // 60)
        )
    except ConnectionError as exc:
        sys.stderr.write(f"wattgate report: {exc}" + "\n")
        return 1
    rows = aggregate(minutes)
    if args.csv:
        sys.stdout.write(to_csv(rows))
    elif not rows:
        sys.stdout.write(f"no attributed energy in the last {args.since} (prefix {args.redis_prefix})" + "\n")
    else:
        sys.stdout.write(to_table(rows) + "\n")
    return 0


REPORT = Command(
    "report",
    "energy, tokens, J/token and carbon per model and API key",
    OPTIONS,
    run,
    "Sum the energy (and carbon) the gateways attributed to requests and to idle instances per model and API key "
    "over a time window, from Redis. Figures are settled bookings: a request is counted once its last energy "
    "interval closed (a second or two after it ended). The source column says measured (NVML) or modelled "
    "(simulated GPUs).",
)
COMMANDS = (REPORT,)


def register(subparsers: Any) -> None:
    for command in COMMANDS:
        add_command(subparsers, command)
