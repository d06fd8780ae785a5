"""``wattgate plan`` (solve one epoch offline) and ``wattgate planner`` (the leader-elected planning loop)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, choice, custom, number
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command

if TYPE_CHECKING:
    from wattgate.planner.loop import LoopSettings
    from wattgate.profiles.table import Profile


def _loads(raw: Any) -> dict[str, float]:
    """``SS=2.5,MM=1.0`` (or a YAML mapping) as pool -> req/s; pool names and signs are checked by the planner."""
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, str):
        for part in filter(None, (x.strip() for x in raw.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"expected POOL=REQ_PER_S, got {part!r}")
            items.append((name.strip(), value.strip()))
    else:
        raise ValueError(f"expected POOL=REQ_PER_S,... or a mapping, got {raw!r}")
    out: dict[str, float] = {}
    for name, value in items:
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number (pool {name})") from None
    if not out:
        raise ValueError("give at least one POOL=REQ_PER_S")
    return out


def _show_loads(value: Any) -> str:
    return ",".join(f"{k}={v:g}" for k, v in value.items()) if value else "none"


SOLVER_OPTIONS = (c.PROFILE, c.GPUS_PER_NODE, c.TIME_LIMIT_S, c.HEADROOM, c.TTFT_S, c.TBT_S)
LOOP_HEADROOM = c.HEADROOM.for_command(
    help="share of an instance's SLO-feasible capacity the agents' clock policy may load it to, and the plan too "
    "where set: with the peaks forecast (the default) the plan loads instances to their whole capacity unless "
    "this is given"
)

PLAN_OPTIONS: tuple[Option, ...] = (
    *SOLVER_OPTIONS,
    c.GPUS.for_command(required=True, help="GPUs available in total"),
    Option(
        "load",
        custom("POOL=REQ_PER_S,... (YAML: a mapping)", _loads, _show_loads, metavar="SS=2.5,MM=1.0"),
        None,
        "forecast load per pool in requests/s",
        required=True,
        example="SS=2.5,MM=1",
    ),
    c.JSON,
)

PLANNER_OPTIONS: tuple[Option, ...] = (
    *(LOOP_HEADROOM if o.name == "headroom" else o for o in SOLVER_OPTIONS),
    c.REDIS_URL,
    c.REDIS_PREFIX,
    c.GPUS.for_command(
        help="static GPU count (nodes of --gpus-per-node) instead of the agents' heartbeats; not with --nodes",
        default_text="none: the agents' heartbeats",
    ),
    c.NODES.for_command(
        help="static nodes instead of the agents' heartbeats: N (node1..nodeN of --gpus-per-node GPUs) or "
        "name=GPUS,name=GPUS; not with --gpus",
        default_text="none: the agents' heartbeats",
    ),
    Option("cluster_period_s", number(above=0), 1800.0, "full re-plan period (s)", example="60"),
    Option("pool_period_s", number(above=0), 300.0, "pool re-plan period (s)", example="30"),
    c.QUANTILE.for_command(
        help="the calibrated forecast: per pool, this quantile of its own past errors (as simulate's wattgate); "
        "0 for the classic forecast (the largest method + --margin)"
    ),
    Option(
        "series",
        choice("peaks", "counts"),
        "peaks",
        "what the calibrated forecast forecasts per minute: its busiest 10 s as a rate (peaks; the plan then loads "
        "instances to their whole SLO capacity unless headroom is set) or its requests (counts, headroom 0.8)",
    ),
    Option("lead_s", number(0.0), 95.0, "a start's lead (s) the calibrated forecast covers", example="60"),
    c.AMORTIZE_S,
    Option("margin", number(0.0), 0.15, "the classic forecast's margin over the predicted peak", example="0.3"),
    Option("lease_s", number(above=0), 15.0, "leader lease (s)", example="30"),
    Option(
        "standby_max_s",
        number(0.0),
        240.0,
        "longest a dropped instance stays on warm standby on nodes with sleep mode (s; 0: never)",
        example="60",
    ),
    Option(
        "joint_forecast",
        boolean(),
        True,
        "the calibrated forecast's joint bound: a forecaster of the whole load scales the pools' margins above "
        "their levels down to its own quantile (as simulate's wattgate)",
    ),
    Option(
        "reactive",
        boolean(),
        False,
        "the reactive path between plans: every 5 s, a pool whose requests waited half their TTFT target for a "
        "first token (gateways' observations of the last 10 s) gets its clocks held at the top, then one more "
        "instance, as a plan amendment",
    ),
    Option(
        "min_rps",
        number(0.0),
        0.05,
        "forecast floor per pool (req/s): a pool keeps a warm instance (or spills to one) when no load is seen",
        example="0.1",
    ),
    Option("once", boolean(), False, "run one tick and exit (for scripts and tests)"),
    c.LOG_LEVEL,
)


def _peaks_by_default(v: Values) -> bool:
    """Forecasts of each minute's busiest 10 s already carry the bursts: the plan loads instances fully (unless
    headroom was set: by flag, environment or file)."""
    return v.source("headroom") == "default" and bool(v.quantile) and v.series == "peaks"


def load_profile_arg(spec: str | None) -> Profile:
    """The profile named or at ``spec``; the shipped default without one."""
    from wattgate.planner.model import PlannerError
    from wattgate.profiles.builtin import profile_or_default
    from wattgate.profiles.classes import ProfilesError

    try:
        return profile_or_default(spec)
    except ProfilesError as exc:
        raise PlannerError(str(exc)) from exc


def parse_loads(text: str) -> dict[str, float]:
    """``SS=2.5,MM=1.0`` as checked demand (unknown pools and negative loads are PlannerErrors)."""
    from wattgate.planner.model import PlannerError, parse_demand

    try:
        return parse_demand(_loads(text))
    except ValueError as exc:
        raise PlannerError(f"--load: {exc}") from None


def _solver(v: Values, amortize_s: float | None = None, headroom: float | None = None) -> Any:
    """The solver's settings; ``headroom``: another than the option's (the planner's peaks forecast)."""
    from wattgate.planner.model import SolverSettings
    from wattgate.profiles.classes import LENGTH_CLASSES, SloTargets

    slo = SloTargets(dict(zip(LENGTH_CLASSES, v.ttft_s, strict=True)), v.tbt_s)
    return SolverSettings(
        gpus_per_node=v.gpus_per_node,
        time_limit_s=v.time_limit_s,
        headroom=v.headroom if headroom is None else headroom,
        slo=slo,
        amortize_s=amortize_s,
    )


def run_plan(v: Values) -> int:
    import json

    from wattgate.planner.baselines import baseline, single_pool, single_pool_tp
    from wattgate.planner.explain import decision_summary
    from wattgate.planner.model import Inventory, PlannerError, make_problem, parse_demand
    from wattgate.planner.solver import solve
    from wattgate.profiles.classes import RequestType

    try:
        settings = _solver(v)
        demand = parse_demand(v.load)
        profile = load_profile_arg(v.profile)
        problem = make_problem(profile, demand, Inventory.uniform(v.gpus, v.gpus_per_node), settings)
        decision = solve(problem)
    except PlannerError as exc:
        print(f"wattgate plan: error: {exc}", file=sys.stderr)
        return 2
    base = baseline(profile, decision.demand_rps, settings.slo)
    loads = {RequestType.parse(p): rps for p, rps in decision.demand_rps.items()}
    tp = single_pool_tp(profile, [v.gpus_per_node])
    single = single_pool(profile, loads, settings.slo, v.gpus, tp=tp)
    summary = decision_summary(decision, base, single)
    print(json.dumps(summary, sort_keys=True) if v.json else _table(summary))
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _table(s: dict[str, Any]) -> str:
    lines = [f"plan ({s['status']}, solved in {s['solve_time_s'] * 1000:.0f} ms measured)"]
    lines.append(f"{'pool':<5} {'inst':>4} {'TP':>3} {'MHz':>5} {'req/s each':>10} {'W each':>7}")
    for g in s["pools"]:
        lines.append(
            f"{g['pool']:<5} {g['count']:>4} {g['tp']:>3} {g['sm_clock_mhz']:>5} {g['load_rps_each']:>10.2f} "
            f"{g['power_w_each']:>7.0f}"
        )
    for r, by in sorted(s["flows_rps"].items()):
        for q, v in sorted(by.items()):
            if q != r:
                lines.append(f"  {r} spills {v:.2f} req/s to {q}")
    lines.append(f"GPUs: {s['gpus_used']} of {s['gpu_budget']}")
    lines.append(
        f"predicted power: {s['predicted_power_w']:.0f} W for its instances, {s['predicted_cluster_power_w']:.0f} W "
        f"with the other GPUs of the {s['gpu_budget']} idle (modelled)"
    )
    one = s.get("single_pool_baseline")
    if one is not None:
        lines.append(
            f"single-pool baseline (one pool of the largest TP a node holds at max clock for every type, 70 W per "
            f"other GPU): {one['instances']} x TP{one['tp']} @ {one['sm_clock_mhz']} MHz, {one['gpus']} GPUs, "
            f"{one['power_w']:.0f} W (modelled)"
        )
    b = s["multi_pool_baseline"]
    over = f" (more than the {s['gpu_budget']} available)" if b["gpus"] > s["gpu_budget"] else ""
    lines.append(
        f"multi-pool baseline (each type its own TP8 pool at max clock): {b['gpus']} GPUs{over}, "
        f"{b['power_w']:.0f} W (modelled)"
    )
    for g in b["pools"]:
        lines.append(
            f"  {g['pool']:<5} {g['count']:>4} x TP8 @ {g['sm_clock_mhz']} MHz, {g['load_rps_each']:.2f} req/s each"
        )
    saving = s["saving"]
    if "vs_single_pool_baseline" in saving:
        lines.append(
            f"saving vs the single-pool baseline: {_pct(saving['vs_single_pool_baseline'])} (modelled; "
            f"the baseline the README's headline figures, the demo and the dashboard use)"
        )
    lines.append(f"saving vs the multi-pool baseline: {_pct(saving['vs_multi_pool_baseline'])} (modelled)")
    lines.extend(f"ALERT: {a}" for a in s["alerts"])
    return "\n".join(lines)


def run_planner(v: Values) -> int:
    """``wattgate planner``: settings parsed once; Redis must answer at start; then run until interrupted."""
    import contextlib
    import logging
    import os
    import signal
    import socket
    import threading
    import time
    import uuid

    from wattgate.planner.contract import Keys
    from wattgate.planner.loop import PlannerLoop
    from wattgate.planner.model import PlannerError
    from wattgate.planner.store import PlannerStore, StoreError
    from wattgate.settings.common import DEFAULT_REDIS_URL, redact_url

    url = v.redis_url or DEFAULT_REDIS_URL
    try:
        settings = _loop_settings(v)
        profile = load_profile_arg(v.profile)
        store = PlannerStore(url, Keys(v.redis_prefix))
    except PlannerError as exc:
        print(f"wattgate planner: error: {exc}", file=sys.stderr)
        return 2
    try:
        store.ping()
    except StoreError as exc:
        store.close()
        print(f"wattgate planner: error: cannot reach Redis at {redact_url(url)}: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=v.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    loop = PlannerLoop(store, profile, settings, time.time, me)
    try:
        if v.once:
            outcome = loop.tick()
            print(f"planner tick: {outcome}")
            if loop.leader:
                with contextlib.suppress(StoreError):
                    store.release_lease(me)
            return 0 if outcome in ("published", "follower", "idle") else 1
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # stop cleanly: the lease is released
        try:
            loop.run(stop)
        except KeyboardInterrupt:
            stop.set()
        return 0
    finally:
        store.close()


def _loop_settings(v: Values) -> LoopSettings:
    from wattgate.planner.forecast import ForecastSettings
    from wattgate.planner.loop import LoopSettings
    from wattgate.planner.model import Inventory, Node, PlannerError
    from wattgate.planner.reactive import ReactSettings
    from wattgate.settings.common import node_list

    if v.nodes and v.gpus is not None:
        raise PlannerError("--gpus and --nodes are alternatives: give one (or neither, for the agents' heartbeats)")
    static: tuple[Node, ...] | None = None
    if v.nodes:
        static = tuple(Node(name, gpus) for name, gpus in node_list(v.nodes, v.gpus_per_node))
    elif v.gpus is not None:
        static = Inventory.uniform(v.gpus, v.gpus_per_node).nodes
    return LoopSettings(
        cluster_period_s=v.cluster_period_s,
        pool_period_s=v.pool_period_s,
        lease_s=v.lease_s,
        static_nodes=static,
        forecast=ForecastSettings(margin=v.margin),
        quantile=v.quantile or None,
        series=v.series,
        joint=v.joint_forecast,
        clock_headroom=v.headroom,
        lead_s=v.lead_s,
        min_pool_rps=v.min_rps,
        standby_max_s=v.standby_max_s,
        reactive=ReactSettings() if v.reactive else None,
        solver=_solver(v, amortize_s=v.amortize_s, headroom=1.0 if _peaks_by_default(v) else None),
    )


PLAN = Command("plan", "solve one epoch: what would wattgate run for this load?", PLAN_OPTIONS, run_plan)
PLANNER = Command(
    "planner",
    "run the planner loop (one leader per Redis, others wait)",
    PLANNER_OPTIONS,
    run_planner,
    "Forecast each pool's load, solve the plan and publish it, as the leader of its Redis. At start it checks "
    "that Redis answers and exits with one line if not.",
)
COMMANDS = (PLAN, PLANNER)


def register(subparsers: Any) -> None:
    for command in COMMANDS:
        add_command(subparsers, command)
