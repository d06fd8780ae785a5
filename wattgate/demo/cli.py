"""``wattgate demo``: flags, validation and the hand-off to the runner (argparse only at module level)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="one-machine demo: simulated cluster, Azure trace replay, live view and energy report",
        description="Start a private Redis, a planner, one agent per simulated node and the gateway; replay an "
        "Azure trace through the OpenAI API; report energy and SLOs against the single-pool TP8 baseline.",
    )
    p.add_argument("--duration-s", type=float, default=120.0, help="wall seconds of replay (default 120)")
    p.add_argument(
        "--speed",
        type=float,
        default=4.0,
        help="trace seconds per wall second; one request in SPEED is kept so the rate stays the trace's (default 4)",
    )
    p.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="share of the trace's requests replayed, to fit the cluster (default 0.5: about 2.4 req/s)",
    )
    p.add_argument("--nodes", type=int, default=2, help="simulated nodes, one agent each (default 2)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="simulated H100s per node (default 8)")
    p.add_argument("--port", type=int, default=8080, help="gateway port on 127.0.0.1 (default 8080)")
    p.add_argument("--trace", metavar="FILE", default=None, help="Azure trace CSV (default: the shipped excerpt)")
    p.add_argument("--keep-running", action="store_true", help="after the report keep the gateway up until Ctrl-C")
    p.add_argument("--max-output-tokens", type=int, default=None, help="cap each request's output tokens")
    p.add_argument("--report-json", metavar="FILE", default=None, help="also write the report as JSON")
    p.add_argument("--run-dir", metavar="DIR", default=None, help="logs and state (default: a new temp directory)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request thinning (default 0)")
    p.add_argument(
        "--external",
        action="store_true",
        help="start the engines up front and register them as external servers (wattgate agent --external): "
        "the planner gives them pools and clocks only, as for servers you already run",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems = [
        msg
        for bad, msg in (
            (args.duration_s <= 0, "--duration-s must be > 0"),
            (args.speed < 1, "--speed must be >= 1"),
            (not 0 < args.load_fraction <= 1, "--load-fraction must be in (0, 1]"),
            (args.nodes < 1, "--nodes must be >= 1"),
            (args.gpus_per_node not in (1, 2, 4, 8), "--gpus-per-node must be 1, 2, 4 or 8"),
            (not 0 < args.port < 65536, "--port must be 1..65535"),
            (args.max_output_tokens is not None and args.max_output_tokens < 1, "--max-output-tokens must be >= 1"),
        )
        if bad
    ]
    if problems:
        print(f"wattgate demo: {problems[0]}", file=sys.stderr)
        return 2
    from wattgate.demo.runner import DemoSettings, main

    return main(DemoSettings.from_args(args))
