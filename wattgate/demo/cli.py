"""``wattgate demo``: options, the checks between them and the hand-off to the runner."""

from __future__ import annotations

import sys
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, integer, number, optional, path
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command

OPTIONS: tuple[Option, ...] = (
    c.DURATION_S.for_command(default=120.0, help="wall seconds of replay"),
    c.SPEED.for_command(
        default=4.0,
        help="trace seconds per wall second (>= 1); one request in SPEED is kept so the rate stays the trace's",
    ),
    Option(
        "load_fraction",
        number(maximum=1.0, above=0),
        0.5,
        "share of the trace's requests replayed, to fit the cluster (0.5: about 2.4 req/s)",
        example="1",
    ),
    c.NODES.for_command(default="2", help="simulated nodes, one agent each: N, or name=GPUS,name=GPUS"),
    c.GPUS_PER_NODE.for_command(help="simulated H100s per node when --nodes is a count (1, 2, 4 or 8)"),
    c.PORT.for_command(help="gateway port on 127.0.0.1 (must be free)"),
    c.TRACE.for_command(
        positional=False,
        help="an Azure trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)",
        default_text="the shipped excerpt",
        flag="--trace",
    ),
    Option("keep_running", boolean(), False, "after the report keep the gateway up until Ctrl-C"),
    Option(
        "max_output_tokens",
        optional(integer(1)),
        None,
        "cap each request's output tokens",
        default_text="none",
        example="60",
    ),
    Option("report_json", path(), None, "also write the report as JSON to this file", example="report.json"),
    Option("run_dir", path(), None, "logs and state", default_text="a new temporary directory", example="demo-run"),
    c.SEED.for_command(help="seed of the request thinning"),
    Option(
        "external",
        boolean(),
        False,
        "start the engines up front and register them as external servers (wattgate agent --external): the planner "
        "gives them pools and clocks only, as for servers you already run",
    ),
)


def run(v: Values) -> int:
    from wattgate.settings.common import node_list

    nodes = node_list(v.nodes, v.gpus_per_node)
    problems = [
        msg
        for bad, msg in (
            (v.speed < 1, "--speed must be >= 1"),
            (
                any(g not in (1, 2, 4, 8) for _, g in nodes),
                "--nodes / --gpus-per-node: each node has 1, 2, 4 or 8 simulated GPUs",
            ),
            (len(v.trace) > 1, "--trace: the demo replays one trace file"),
        )
        if bad
    ]
    if problems:
        print(f"wattgate demo: error: {problems[0]}", file=sys.stderr)
        return 2
    from wattgate.demo.runner import DemoSettings, main

    return main(DemoSettings.from_values(v, nodes))


COMMAND = Command(
    "demo",
    "one-machine demo: simulated cluster, Azure trace replay, live view and energy report",
    OPTIONS,
    run,
    "Start a private Redis, a planner, one agent per simulated node and the gateway; replay an Azure trace "
    "through the OpenAI API; report energy and SLOs against the single-pool baseline. The gateway's port must be "
    "free (it is checked before anything starts); Redis and the engines take free ports of their own.",
)
COMMANDS = (COMMAND,)


def register(subparsers: Any) -> None:
    add_command(subparsers, COMMAND)
