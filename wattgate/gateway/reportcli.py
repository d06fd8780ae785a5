"""``wattgate report``: energy, tokens, J/token and carbon per model and API key, from the gateways' Redis minutes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="energy, tokens, J/token and carbon per model and API key",
        description="Sum the energy the gateways attributed to requests (and to idle instances) per model and API "
        "key over a time window, from Redis. Figures are settled bookings: a request is counted once its last "
        "energy interval closed (a second or so after it ended).",
    )
    p.add_argument("--since", default="24h", metavar="DURATION", help="window: the last 90s, 30m, 24h (default), 7d")
    p.add_argument("--redis-url", help="redis://host:port/db (env WATTGATE_REDIS_URL)")
    p.add_argument("--redis-prefix", default=None, help="key prefix of the deployment (default wg)")
    p.add_argument(
        "--carbon-g-per-kwh",
        type=float,
        default=None,
        help="carbon intensity for the gCO2e column (env WATTGATE_ENERGY_CARBON_G_PER_KWH; default 475)",
    )
    p.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415  (subcommand modules import only argparse at module level)
    import time  # noqa: PLC0415

    from wattgate.gateway.energy_report import ReportError, aggregate, parse_duration_s, to_csv, to_table  # noqa: PLC0415
    from wattgate.gateway.store import read_energy_minutes  # noqa: PLC0415
    from wattgate.planner.contract import DEFAULT_PREFIX, Keys  # noqa: PLC0415

    url = args.redis_url or os.environ.get("WATTGATE_REDIS_URL")
    if not url:
        sys.stderr.write("wattgate report: give --redis-url (or WATTGATE_REDIS_URL)\n")
        return 2
    try:
        window_s = parse_duration_s(args.since)
        carbon = args.carbon_g_per_kwh
        if carbon is None:
            carbon = float(os.environ.get("WATTGATE_ENERGY_CARBON_G_PER_KWH", "475"))
    except (ReportError, ValueError) as exc:
        sys.stderr.write(f"wattgate report: {exc}" + "\n")
        return 2
    prefix = args.redis_prefix or os.environ.get("WATTGATE_REDIS_PREFIX") or DEFAULT_PREFIX
    now = time.time()
    try:
        minutes = asyncio.run(read_energy_minutes(url, Keys(prefix), int(now - window_s) // 60, int(now) // 60))
    except ConnectionError as exc:
        sys.stderr.write(f"wattgate report: {exc}" + "\n")
        return 1
    rows = aggregate(minutes, carbon)
    if args.csv:
        sys.stdout.write(to_csv(rows))
    elif not rows:
        sys.stdout.write(f"no attributed energy in the last {args.since} (prefix {prefix})" + "\n")
    else:
        sys.stdout.write(to_table(rows, carbon) + "\n")
    return 0
