"""``wattgate plan`` (solve one epoch offline) and ``wattgate planner`` (the leader-elected planning loop)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wattgate.planner.loop import LoopSettings
    from wattgate.profiles.table import Profile


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="solve one epoch: what would wattgate run for this load?")
    _profile_args(p)
    p.add_argument("--gpus", type=int, required=True, help="GPUs available in total")
    p.add_argument("--load", required=True, help="forecast load per pool in req/s, e.g. SS=2.5,MM=1.0")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.set_defaults(func=run_plan)

    q = subparsers.add_parser("planner", help="run the planner loop (one leader per Redis, others wait)")
    _profile_args(q)
    q.add_argument(
        "--redis-url", default=None, help="Redis URL (default: $WATTGATE_REDIS_URL or redis://localhost:6379/0)"
    )
    q.add_argument("--prefix", default="wg", help="Redis key prefix shared by the deployment")
    q.add_argument("--gpus", type=int, default=None, help="static GPU count instead of the agents' heartbeats")
    q.add_argument("--nodes", default=None, help="static nodes instead of heartbeats: name=GPUS,name=GPUS")
    q.add_argument("--cluster-period-s", type=float, default=1800.0, help="full re-plan period (default 1800)")
    q.add_argument("--pool-period-s", type=float, default=300.0, help="pool re-plan period (default 300)")
    q.add_argument(
        "--quantile",
        type=float,
        default=0.9,
        help="the calibrated forecast: per pool, this quantile of its own past errors (0.9, as simulate's "
        "wattgate); 0 for the classic forecast (the largest method + --margin)",
    )
    q.add_argument(
        "--series",
        choices=("peaks", "counts"),
        default="peaks",
        help="what the calibrated forecast forecasts per minute: its busiest 10 s as a rate (peaks, default; "
        "the plan then loads instances to their whole SLO capacity unless --headroom says otherwise) or its "
        "requests (counts, headroom 0.8)",
    )
    q.add_argument("--lead-s", type=float, default=95.0, help="a start's lead the calibrated forecast covers (95)")
    q.add_argument(
        "--amortize-s",
        type=float,
        default=600.0,
        help="a transition's energy is weighed against what it saves over this long (600 s)",
    )
    q.add_argument("--margin", type=float, default=0.15, help="the classic forecast's margin (0.15)")
    q.add_argument("--lease-s", type=float, default=15.0, help="leader lease (default 15 s)")
    q.add_argument(
        "--min-rps",
        type=float,
        default=0.05,
        help="forecast floor per pool (0.05): a pool keeps a warm instance (or spills to one) when no load is seen",
    )
    q.add_argument(
        "--standby-max-s",
        type=float,
        default=240.0,
        help="longest a dropped instance stays on warm standby on nodes with sleep mode (240; 0: never)",
    )
    q.add_argument("--once", action="store_true", help="run one tick and exit (for scripts and tests)")
    q.set_defaults(func=run_planner)


def _headroom(args: argparse.Namespace) -> float:
    from wattgate.planner.model import DEFAULT_HEADROOM

    return DEFAULT_HEADROOM if args.headroom is None else float(args.headroom)


def _peaks_by_default(args: argparse.Namespace) -> bool:
    """Forecasts of each minute's busiest 10 s already carry the bursts: the plan loads instances fully."""
    return args.headroom is None and bool(args.quantile) and args.series == "peaks"


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="profile name or path (default: the built-in profile)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node; TP groups stay in one node (8)")
    p.add_argument("--time-limit-s", type=float, default=1.5, help="MILP time limit before the best plan found")
    p.add_argument(
        "--headroom",
        type=float,
        default=None,
        help="share of an instance's SLO-feasible capacity (the profile's P99 limit at steady load) the plan may "
        "load it to; the rest absorbs bursts and misclassified requests (default 0.8, see README)",
    )


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
    from wattgate.planner.model import PlannerError, parse_demand

    out: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise PlannerError(f"--load: expected POOL=REQ_PER_S, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise PlannerError(f"--load: {value!r} is not a number (pool {name.strip()})") from None
    if not out:
        raise PlannerError("--load: give at least one POOL=REQ_PER_S")
    return parse_demand(out)


def run_plan(args: argparse.Namespace) -> int:
    import json

    from wattgate.planner.baselines import baseline
    from wattgate.planner.explain import decision_summary
    from wattgate.planner.model import Inventory, PlannerError, SolverSettings, make_problem
    from wattgate.planner.solver import solve

    try:
        if args.gpus is None or args.gpus < 1:
            raise PlannerError("--gpus must be at least 1")
        settings = SolverSettings(
            gpus_per_node=args.gpus_per_node, time_limit_s=args.time_limit_s, headroom=_headroom(args)
        )
        demand = parse_loads(args.load)
        profile = load_profile_arg(args.profile)
        problem = make_problem(profile, demand, Inventory.uniform(args.gpus, args.gpus_per_node), settings)
        decision = solve(problem)
    except PlannerError as exc:
        print(f"wattgate plan: error: {exc}", file=sys.stderr)
        return 2
    base = baseline(profile, decision.demand_rps, settings.slo)
    summary = decision_summary(decision, base)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(_table(summary))
    return 0


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
    lines.append(f"predicted power: {s['predicted_power_w']:.0f} W (modelled)")
    b = s["baseline"]
    over = f" (more than the {s['gpu_budget']} available)" if b["gpus"] > s["gpu_budget"] else ""
    lines.append(f"baseline all TP8 at max clock: {b['gpus']} GPUs{over}, {b['power_w']:.0f} W (modelled)")
    for g in b["pools"]:
        lines.append(
            f"  {g['pool']:<5} {g['count']:>4} x TP8 @ {g['sm_clock_mhz']} MHz, {g['load_rps_each']:.2f} req/s each"
        )
    if b["power_w"]:
        lines.append(f"saving vs baseline: {100 * (1 - s['predicted_power_w'] / b['power_w']):.0f}% (modelled)")
    lines.extend(f"ALERT: {a}" for a in s["alerts"])
    return "\n".join(lines)


def run_planner(args: argparse.Namespace) -> int:
    """``wattgate planner``: parse settings once, then run until interrupted."""
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

    try:
        settings = _loop_settings(args)
        profile = load_profile_arg(args.profile)
        url = args.redis_url or os.environ.get("WATTGATE_REDIS_URL", "redis://localhost:6379/0")
        store = PlannerStore(url, Keys(args.prefix))
    except (PlannerError, ValueError) as exc:
        print(f"wattgate planner: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    loop = PlannerLoop(store, profile, settings, time.time, me)
    try:
        if args.once:
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


def _loop_settings(args: argparse.Namespace) -> LoopSettings:
    from wattgate.planner.forecast import ForecastSettings
    from wattgate.planner.loop import LoopSettings, parse_nodes
    from wattgate.planner.model import Inventory, Node, PlannerError, SolverSettings

    static: tuple[Node, ...] | None = None
    if args.nodes:
        static = parse_nodes(args.nodes)
    elif args.gpus is not None:
        if args.gpus < 1:
            raise PlannerError("--gpus must be at least 1")
        static = Inventory.uniform(args.gpus, args.gpus_per_node).nodes
    return LoopSettings(
        cluster_period_s=args.cluster_period_s,
        pool_period_s=args.pool_period_s,
        lease_s=args.lease_s,
        static_nodes=static,
        forecast=ForecastSettings(margin=args.margin),
        quantile=args.quantile or None,
        series=args.series,
        clock_headroom=_headroom(args),
        lead_s=args.lead_s,
        min_pool_rps=args.min_rps,
        standby_max_s=args.standby_max_s,
        solver=SolverSettings(
            gpus_per_node=args.gpus_per_node,
            time_limit_s=args.time_limit_s,
            headroom=1.0 if _peaks_by_default(args) else _headroom(args),
            amortize_s=args.amortize_s,
        ),
    )
