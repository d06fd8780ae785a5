"""``wattgate simulate``: replay a trace under every policy and compare energy, cost and latency (modelled)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wattgate.simulate.fleet import FixedFleet

from wattgate.carbon import constant
from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, choice, integer, number, optional, text
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command

DEFAULT_POLICIES = "single-pool,multi-pool,scale-inst,scale-shard,scale-freq,wattgate,oracle"
FIXED_FLEET_POLICIES = "fixed-single-pool,fixed-scale-freq,fixed-wattgate,wattgate"
ABLATION_HELP = (
    "wattgate with the shipped classifier, a perfect one, none (input-class pools), clock scaling only, TP8 only, "
    "and with the classic forecast (max of methods + 15%)"
)


def _policies(value: str) -> None:
    if not [p for p in value.split(",") if p.strip()]:
        raise ValueError(f"give at least one policy, e.g. {DEFAULT_POLICIES}")


def _fleet_spec(value: str) -> None:
    from wattgate.simulate.fleet import FixedFleet
    from wattgate.simulate.trace import SimulateError

    try:
        FixedFleet.parse(value)
    except SimulateError as exc:
        raise ValueError(str(exc).removeprefix("--fixed-fleet: ")) from None


# One line per option (wattgate.settings): the flag, WATTGATE_<NAME>, the YAML key and the README row follow.
OPTIONS: tuple[Option, ...] = (
    c.TRACE.for_command(required=True, help="trace file(s): Azure CSV or a JSONL log of observations; merged"),
    Option(
        "policies",
        text(check=_policies),
        "",
        "comma-separated policies to replay",
        default_text=f"{DEFAULT_POLICIES}; with --fixed-fleet: {FIXED_FLEET_POLICIES}",
        example="oracle",
    ),
    Option(
        "fixed_fleet",
        text(check=_fleet_spec, label="N or CxTPn,..."),
        "",
        "replay on a fleet wattgate may not start or stop: N (N TP8 instances) or a list like 4xTP8,8xTP4; the "
        "fixed-* policies only choose each instance's pool and clock, and the cluster (for every policy, fully "
        "managed wattgate included) is the fleet's 8-GPU nodes",
        default_text="none",
        example="4xTP8,8xTP4",
    ),
    Option("ablation", boolean(), False, f"run the ablation instead of --policies: {ABLATION_HELP}"),
    c.PROFILE.for_command(help="the planner's profile: a builtin name or a profile file"),
    c.ARCH,
    c.ENGINE_CALIBRATION,
    Option(
        "iso_slo_target",
        number(maximum=1.0, above=0),
        0.99,
        "share of requests within their targets the single-pool baseline is sized for",
        example="0.95",
    ),
    c.GPUS.for_command(
        help="GPUs in the simulated cluster, 8 per node; every one draws power, used or not",
        default_text="twice the iso-SLO single-pool baseline's GPUs",
    ),
    c.SPEED.for_command(help="time scaling: 2 replays the trace twice as fast"),
    Option("scale", number(above=0), 1.0, "load scaling: 2 doubles the requests", example="2"),
    Option("days", optional(number(above=0)), None, "tile the trace into this many diurnal days", example="1"),
    Option("diurnal_low", number(0.0, 1.0), 0.35, "night load as a fraction of the peak", example="0.5"),
    Option("epoch_s", number(above=0), 300.0, "re-planning period of dynamic policies (s)", example="600"),
    Option(
        "confusion",
        text(nonempty=True),
        "measured",
        "'measured', 'perfect', or a 3x3 JSON matrix/file",
        example="perfect",
    ),
    Option(
        "routing",
        choice("gateway", "spill"),
        "gateway",
        "gateway: the live gateway's routing (each type to the pool the plan sends it to, then its spill chain when "
        "that pool has no instance); spill: the spill chain alone (the gateway before it read plans)",
    ),
    c.ADMISSION_WINDOW_S.for_command(
        help="the gateway's admission by the plan: an instance holding more requests than its planned req/s x this "
        "is full and a request spills to the next pool of its route with room (s; 0: off)"
    ),
    c.SPILL_ANY,
    c.BURST_HOLD_S,
    c.BURST_MIN_WAITING,
    c.BURST_MIN_WAITING_FIXED,
    c.HEADROOM.for_command(
        help="share of an instance's SLO-feasible capacity the clock policy and the classic policies may load it "
        "to (as wattgate planner); wattgate and the oracle plan for each minute's busiest 10 s at the whole capacity"
    ),
    c.QUANTILE.for_command(
        help="wattgate's calibrated forecast: the quantile of its own past errors it plans for (> 0)"
    ),
    c.AMORTIZE_S.for_command(
        help="wattgate weighs a transition's energy over this many seconds of the plan it leads to"
    ),
    c.SEED,
    Option(
        "jobs",
        optional(integer(1)),
        None,
        "policies replayed at once, each in its own process (the results do not depend on it)",
        default_text="the CPUs this process may use",
        example="2",
    ),
    Option(
        "carbon_g_per_kwh",
        c.carbon_kind(),
        constant(400.0),
        "grid carbon intensity in g/kWh, or a file with one value per hour from the trace start (cycled)",
        example="300",
    ),
    Option("gpu_hour_price", number(0.0), 2.0, "price of one GPU-hour", example="3"),
    Option("energy_price", number(0.0), 0.10, "price of one kWh", example="0.2"),
    c.JSON.for_command(help="print the JSON document instead of the table"),
    c.OUT.for_command(help="directory for report.json and the PNG plots", default_text="none"),
)


def run(args: Values) -> int:
    import json
    import sys
    from pathlib import Path

    from wattgate.agent.clock_policy import BurstRule
    from wattgate.planner.model import DEFAULT_HEADROOM
    from wattgate.profiles.builtin import DEFAULT_PROFILE, profile_or_default
    from wattgate.profiles.classes import ProfilesError
    from wattgate.servingmodel.errors import ServingModelError
    from wattgate.simulate.confusion import Confusion
    from wattgate.simulate.policies import ABLATION, Calibrated
    from wattgate.simulate.report import Prices, document, table
    from wattgate.simulate.run import SimSettings, default_jobs, simulate
    from wattgate.simulate.trace import SimulateError, load_trace, scale, speed, tile_days

    try:
        fleet = _fleet(args)
        requests = sorted(r for path in args.trace for r in load_trace(path))
        requests = speed(requests, args.speed)
        if args.days is not None:
            requests = tile_days(requests, args.days, args.diurnal_low, args.seed)
        if args.scale != 1.0:
            requests = scale(requests, args.scale, args.seed)
        for name, v in (
            ("--gpu-hour-price", args.gpu_hour_price),
            ("--energy-price", args.energy_price),
        ):
            if v < 0:
                raise SimulateError(f"{name} must be >= 0")
        settings = SimSettings(
            headroom=args.headroom if args.headroom is not None else DEFAULT_HEADROOM,
            gpus=args.gpus,
            epoch_s=args.epoch_s,
            seed=args.seed,
            confusion=Confusion.parse(args.confusion),
            plan_routing=args.routing == "gateway",
            arch=args.arch,
            engine=args.engine_calibration,
            iso_slo_target=args.iso_slo_target,
            calibrated=Calibrated(quantile=args.quantile, amortize_s=args.amortize_s),
            fleet=fleet,
            admission_window_s=args.admission_window_s,
            spill_any=args.spill_any,
            burst=BurstRule(args.burst_hold_s, args.burst_min_waiting, args.burst_min_waiting_fixed),
        )
        profile = profile_or_default(args.profile)
        default = FIXED_FLEET_POLICIES if fleet is not None else DEFAULT_POLICIES
        names = args.policies if args.source("policies") != "default" else default  # given but empty: an error
        policies = list(ABLATION) if args.ablation else [p.strip() for p in names.split(",") if p.strip()]
        if not policies:
            raise SimulateError("--policies names no policy")
        sim = simulate(
            requests,
            profile,
            policies,
            settings,
            jobs=args.jobs or default_jobs(),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except (SimulateError, ProfilesError, ServingModelError) as exc:
        print(f"wattgate simulate: error: {exc}", file=sys.stderr)
        return 2
    prices = Prices(args.carbon_g_per_kwh, args.gpu_hour_price, args.energy_price)
    meta = {
        "traces": list(args.trace),
        "requests": len(requests),
        "gpus": sim.gpus,
        "gpus_chosen": "the fixed fleet's nodes"
        if fleet is not None
        else ("--gpus" if args.gpus else "twice the iso-SLO single-pool baseline's GPUs"),
        "fixed_fleet": fleet.to_json() if fleet is not None else None,
        "profile": args.profile or DEFAULT_PROFILE,
        "speed": args.speed,
        "scale": args.scale,
        "days": args.days,
        "confusion": args.confusion,
        "routing": args.routing,
        "headroom": settings.headroom,
        "admission_window_s": settings.admission_window_s,
        "spill_any": settings.spill_any,
        "burst_hold_s": settings.burst.hold_s,
        "burst_min_waiting": settings.burst.min_waiting,
        "burst_min_waiting_fixed": settings.burst.min_waiting_fixed,
        "arch": settings.arch,
        "engine": settings.engine,
        "single_pool": {
            "instances": sim.single_pool_instances,
            "target": settings.iso_slo_target,
            "reached_target": sim.single_pool_reached_target,
            "sizing": [{"instances": n, "slo_attainment": a} for n, a in sim.sizing],
        }
        if sim.sizing
        else None,
    }
    results = sim.results
    doc = document(results, settings.slo, prices, meta)
    print(json.dumps(doc, indent=2) if args.json else table(doc))
    if args.out:
        from wattgate.simulate.plots import write_plots

        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
            paths = write_plots(out, results, doc)
        except OSError as exc:
            print(f"wattgate simulate: error: cannot write to {out}: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {out / 'report.json'} and {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _fleet(args: Values) -> FixedFleet | None:
    """``--fixed-fleet``, which sets the cluster: no ``--gpus`` with it."""
    from wattgate.simulate.fleet import FixedFleet
    from wattgate.simulate.trace import SimulateError

    if not args.fixed_fleet:
        return None
    fleet = FixedFleet.parse(args.fixed_fleet)
    if args.gpus is not None:
        raise SimulateError("--gpus and --fixed-fleet: the fixed fleet's nodes are the cluster, drop --gpus")
    return fleet


COMMAND = Command(
    "simulate",
    "replay a request trace on a simulated cluster under each policy (energy and latency modelled)",
    OPTIONS,
    run,
    "Replay a trace (Azure CSV: TIMESTAMP, ContextTokens, GeneratedTokens; or a JSONL log of wattgate "
    "observations) through the gateway's routing, the planner's forecast and MILP and the agent's clock policy on "
    "N simulated GPUs running the serving model's engines. All energy, power and latency figures are modelled.",
)
COMMANDS = (COMMAND,)


def register(subparsers: Any) -> None:
    add_command(subparsers, COMMAND)
