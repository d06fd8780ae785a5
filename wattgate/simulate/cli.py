"""``wattgate simulate``: replay a trace under every policy and compare energy, cost and latency (modelled)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wattgate.simulate.fleet import FixedFleet

DEFAULT_POLICIES = "single-pool,multi-pool,scale-inst,scale-shard,scale-freq,wattgate,oracle"
FIXED_FLEET_POLICIES = "fixed-single-pool,fixed-scale-freq,fixed-wattgate,wattgate"
ABLATION_HELP = (
    "wattgate with the shipped classifier, a perfect one, none (input-class pools), clock scaling only, TP8 only, "
    "and with the classic forecast (max of methods + 15%%)"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a request trace on a simulated cluster under each policy (energy and latency modelled)",
        description="Replay a trace (Azure CSV: TIMESTAMP, ContextTokens, GeneratedTokens; or a JSONL log of "
        "wattgate observations) through the gateway's routing, the planner's forecast and MILP and the agent's "
        "clock policy on N simulated GPUs running the serving model's engines. All energy, power and latency "
        "figures are modelled.",
    )
    p.add_argument("trace", nargs="+", help="trace file(s); several are merged on one time axis")
    p.add_argument(
        "--policies",
        default=None,
        help=f"comma-separated (default: {DEFAULT_POLICIES}; with --fixed-fleet: {FIXED_FLEET_POLICIES})",
    )
    p.add_argument(
        "--fixed-fleet",
        default=None,
        metavar="SPEC",
        help="replay on a fleet wattgate may not start or stop: N (N TP8 instances) or a list like 4xTP8,8xTP4; "
        "the fixed-* policies only choose each instance's pool and clock, and the cluster (for every policy, "
        "fully managed wattgate included) is the fleet's 8-GPU nodes",
    )
    p.add_argument("--ablation", action="store_true", help=f"run the ablation instead of --policies: {ABLATION_HELP}")
    p.add_argument(
        "--profile", default=None, help="the planner's profile: builtin name or file (default: the shipped one)"
    )
    p.add_argument("--arch", default=None, help="model architecture the engines run (default llama-3.1-70b)")
    p.add_argument("--engine", default=None, help="engine calibration (default vllm-v1)")
    p.add_argument(
        "--iso-slo-target",
        type=float,
        default=0.99,
        help="share of requests within their targets the single-pool baseline is sized for (0.99)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs in the simulated cluster, 8 per node; every one draws power, used or not (default: twice the "
        "iso-SLO single-pool baseline's GPUs)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="time scaling: 2 replays the trace twice as fast")
    p.add_argument("--scale", type=float, default=1.0, help="load scaling: 2 doubles the requests (default 1)")
    p.add_argument("--days", type=float, default=None, help="tile the trace into this many diurnal days")
    p.add_argument("--diurnal-low", type=float, default=0.35, help="night load as a fraction of the peak (0.35)")
    p.add_argument("--epoch-s", type=float, default=300.0, help="re-planning period of dynamic policies (300)")
    p.add_argument("--confusion", default="measured", help="'measured' (default), 'perfect', or a 3x3 JSON matrix/file")
    p.add_argument(
        "--routing",
        choices=("gateway", "spill"),
        default="gateway",
        help="gateway: the live gateway's routing (each type to the pool the plan sends it to, then its spill "
        "chain when that pool has no instance); spill: the spill chain alone (the gateway before it read plans)",
    )
    p.add_argument(
        "--headroom",
        type=float,
        default=None,
        help="share of an instance's SLO-feasible capacity the clock policy and the classic policies may load it "
        "to (default 0.8, as `wattgate planner`); wattgate and the oracle plan for each minute's busiest 10 s at "
        "the whole capacity",
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=0.9,
        help="wattgate's calibrated forecast: the quantile of its own past errors it plans for (0.9)",
    )
    p.add_argument(
        "--amortize-s",
        type=float,
        default=600.0,
        help="wattgate weighs a transition's energy over this many seconds of the plan it leads to (600)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--carbon-g-per-kwh",
        default="400",
        help="grid carbon intensity in g/kWh (400), or a file with one value per hour from the trace start (cycled)",
    )
    p.add_argument("--gpu-hour-price", type=float, default=2.0, help="price of one GPU-hour (2.0)")
    p.add_argument("--energy-price", type=float, default=0.10, help="price of one kWh (0.10)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument("--out", default=None, help="directory for report.json and the PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from wattgate.planner.model import DEFAULT_HEADROOM
    from wattgate.profiles.builtin import profile_or_default
    from wattgate.profiles.classes import ProfilesError
    from wattgate.servingmodel.calibration import DEFAULT_ARCH, DEFAULT_ENGINE
    from wattgate.servingmodel.errors import ServingModelError
    from wattgate.simulate.confusion import Confusion
    from wattgate.simulate.policies import ABLATION, Calibrated
    from wattgate.simulate.report import Prices, document, table
    from wattgate.simulate.run import SimSettings, simulate
    from wattgate.simulate.trace import SimulateError, load_trace, scale, speed, tile_days

    try:
        fleet = _fleet(args)
        requests = sorted(r for path in args.trace for r in load_trace(path))
        requests = speed(requests, args.speed)
        if args.days is not None:
            requests = tile_days(requests, args.days, args.diurnal_low, args.seed)
        if args.scale != 1.0:
            requests = scale(requests, args.scale, args.seed)
        carbon = _carbon(args.carbon_g_per_kwh)
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
            arch=args.arch or DEFAULT_ARCH,
            engine=args.engine or DEFAULT_ENGINE,
            iso_slo_target=args.iso_slo_target,
            calibrated=Calibrated(quantile=args.quantile, amortize_s=args.amortize_s),
            fleet=fleet,
        )
        profile = profile_or_default(args.profile)
        default = FIXED_FLEET_POLICIES if fleet is not None else DEFAULT_POLICIES
        names = args.policies if args.policies is not None else default
        policies = list(ABLATION) if args.ablation else [p.strip() for p in names.split(",") if p.strip()]
        if not policies:
            raise SimulateError("--policies names no policy")
        sim = simulate(requests, profile, policies, settings, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (SimulateError, ProfilesError, ServingModelError) as exc:
        print(f"wattgate simulate: error: {exc}", file=sys.stderr)
        return 2
    prices = Prices(
        carbon[0] if len(carbon) == 1 else 0.0,
        args.gpu_hour_price,
        args.energy_price,
        carbon if len(carbon) > 1 else (),
    )
    meta = {
        "traces": list(args.trace),
        "requests": len(requests),
        "gpus": sim.gpus,
        "gpus_chosen": "the fixed fleet's nodes"
        if fleet is not None
        else ("--gpus" if args.gpus else "twice the iso-SLO single-pool baseline's GPUs"),
        "fixed_fleet": fleet.to_json() if fleet is not None else None,
        "profile": args.profile or "(shipped default)",
        "speed": args.speed,
        "scale": args.scale,
        "days": args.days,
        "confusion": args.confusion,
        "routing": args.routing,
        "headroom": settings.headroom,
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


def _fleet(args: argparse.Namespace) -> FixedFleet | None:
    """``--fixed-fleet``, which sets the cluster: no ``--gpus`` with it."""
    from wattgate.simulate.fleet import FixedFleet
    from wattgate.simulate.trace import SimulateError

    if args.fixed_fleet is None:
        return None
    fleet = FixedFleet.parse(args.fixed_fleet)
    if args.gpus is not None:
        raise SimulateError("--gpus and --fixed-fleet: the fixed fleet's nodes are the cluster, drop --gpus")
    return fleet


def _carbon(spec: str) -> tuple[float, ...]:
    """A number, or a file of one number per line (hourly intensities); all >= 0."""
    from pathlib import Path

    from wattgate.simulate.trace import SimulateError

    try:
        if Path(spec).is_file():
            text = Path(spec).read_text(encoding="utf-8")
            values = tuple(float(x) for x in text.replace(",", "\n").split() if x.strip())
        else:
            values = (float(spec),)
    except (OSError, ValueError) as exc:
        raise SimulateError(f"--carbon-g-per-kwh: expected a number or a file of hourly numbers ({exc})") from exc
    if not values or min(values) < 0:
        raise SimulateError("--carbon-g-per-kwh: intensities must be numbers >= 0")
    return values
