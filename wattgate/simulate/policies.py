"""The policies compared, and how each one plans: the planner's own forecast, solver and baseline code.

``single-pool`` (the baseline) and ``scale-freq`` run one static generic pool of TP8 instances, sized
iso-SLO: the fewest instances with which the replay keeps ``SimSettings.iso_slo_target`` of requests
within their targets (``run.size_single_pool`` searches it). ``scale-inst`` and ``scale-shard`` re-plan
one generic pool every epoch, sized in "instance utilisation" (the sum over types of load / SLO-feasible
capacity). Per-type policies (``multi-pool``, ``wattgate`` and its ablations, ``oracle``) run the
planner's MILP (``wattgate.planner.solver``) or its TP8 baseline per pool.

``wattgate`` plans for a calibrated forecast (``Calibrated``): per pool, an upper ``quantile`` of its
own past errors (``planner.forecast.QuantileForecaster``) of each minute's busiest 10 s over the epoch
and the time a start takes,
weighing each transition's energy over ``amortize_s``; minute plans, standby (sleeping instances woken
before anything starts), the reactive path between plans and forecasting minute counts are switches.
``wattgate-classic`` plans as before (the largest of the classic forecasts plus a 15% margin).
``oracle`` knows every arrival and length: each minute it plans for that minute's true busiest 10
seconds, and transitions cost it nothing.

``fixed-*`` run on a fixed fleet (``--fixed-fleet``, ``simulate.fleet``) that no plan may start or stop:
``fixed-single-pool`` is the fleet as one shared pool at the highest clock (what its owner runs today),
``fixed-scale-freq`` adds the agent's clock policy, ``fixed-wattgate`` plans as ``wattgate`` but with every
instance fixed (``planner.epoch.plan_epoch`` on an empty managed inventory): each epoch it only picks each
instance's pool and clock, and the gateway routes by that plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.epoch import plan_epoch, solve_placeable
from wattgate.planner.explain import running_counts
from wattgate.planner.forecast import ForecastSettings, PoolForecasts, QuantileSettings, forecast_peak
from wattgate.planner.greedy import baseline
from wattgate.planner.model import FixedInstance, Group, Inventory, PlannerError, SolverSettings, make_problem
from wattgate.planner.solver import solve
from wattgate.profiles.classes import POOL_NAMES, REQUEST_TYPES
from wattgate.simulate.engine import GENERIC, Flows
from wattgate.simulate.model import Model
from wattgate.simulate.trace import SimulateError

MINUTE_S = 60.0


@dataclass(frozen=True)
class PolicySpec:
    name: str
    typed_pools: bool  # per-type pools (needs the classifier) or one generic pool
    tps: tuple[int, ...]
    all_clocks: bool  # the plan may pick any measured clock (else the highest)
    dynamic: bool  # re-planned every epoch from a forecast (else sized once for the trace's peak)
    clock_loop: bool  # the agent's 5 s clock policy runs
    oracle: bool = False  # true output lengths and the true future load, free transitions, minute re-plans
    iso_slo: bool = False  # a static single pool of the searched iso-SLO size
    confusion: str | None = None  # "perfect" or "longest" (no output prediction): overrides the measured one
    calibrated: bool = False  # plans for the calibrated forecast (``Calibrated``; minute plans etc. are its switches)
    fixed: bool = False  # runs on the fixed fleet: plans choose pools and clocks only
    about: str = ""


def _wattgate(
    name: str,
    about: str,
    *,
    tps: tuple[int, ...] = (2, 4, 8),
    confusion: str | None = None,
    calibrated: bool = True,
    fixed: bool = False,
) -> PolicySpec:
    return PolicySpec(
        name, True, tps, True, True, True, confusion=confusion, calibrated=calibrated, fixed=fixed, about=about
    )


POLICIES: dict[str, PolicySpec] = {
    p.name: p
    for p in (
        PolicySpec("single-pool", False, (8,), False, False, False, iso_slo=True, about="one static TP8 pool, iso-SLO"),
        PolicySpec("multi-pool", True, (8,), False, False, False, about="per-type pools, TP8, max clock, static"),
        PolicySpec("scale-inst", False, (8,), False, True, False, about="one pool, instance count re-planned"),
        PolicySpec("scale-shard", False, (2, 4, 8), False, True, False, about="one pool, TP re-planned"),
        PolicySpec("scale-freq", False, (8,), False, False, True, iso_slo=True, about="iso-SLO pool + clock policy"),
        _wattgate("wattgate", "per-type pools, calibrated quantile forecast, MILP every epoch, clock policy"),
        _wattgate("wattgate-perfect", "wattgate with true output classes", confusion="perfect"),
        _wattgate(
            "wattgate-input-pools", "wattgate without output prediction: pools per input class", confusion="longest"
        ),
        _wattgate("wattgate-tp8", "wattgate without re-sharding: TP8 only", tps=(8,)),
        _wattgate("wattgate-classic", "wattgate with the classic forecast: the largest method + 15%", calibrated=False),
        PolicySpec("oracle", True, (2, 4, 8), True, True, True, True, about="true future, free transitions, 1 min"),
        PolicySpec("fixed-single-pool", False, (), False, False, False, fixed=True, about="the fixed fleet, one pool"),
        PolicySpec("fixed-scale-freq", False, (), False, False, True, fixed=True, about="fixed fleet + clock policy"),
        _wattgate("fixed-wattgate", "wattgate on the fixed fleet: pools and clocks only", fixed=True),
    )
}
DEFAULT = ("single-pool", "multi-pool", "scale-inst", "scale-shard", "scale-freq", "wattgate", "oracle")
ABLATION = (
    "single-pool",
    "wattgate",
    "wattgate-perfect",
    "wattgate-input-pools",
    "scale-freq",
    "wattgate-tp8",
    "wattgate-classic",
    "oracle",
)


@dataclass(frozen=True)
class Workload:
    """Per-minute request counts per type: true types, and the types the classifier predicted; and per
    minute the busiest ``PEAK_WINDOW_S`` seconds of it as a per-minute rate (bursts inside it included)."""

    true_counts: dict[str, list[float]]
    pred_counts: dict[str, list[float]]
    true_peaks: dict[str, list[float]]
    pred_peaks: dict[str, list[float]]
    total_peaks: list[float] = dataclasses.field(default_factory=list)  # of all arrivals, whatever their type

    @property
    def minutes(self) -> int:
        return len(next(iter(self.true_counts.values())))


@dataclass(frozen=True)
class Calibrated:
    """How the calibrated policies (``wattgate`` and its ablations) plan; defaults in ``SimSettings``."""

    # Defaults: what the Azure traces favour (README, "Trace replay"): a 0.9 quantile of each minute's busiest
    # 10 s, plans every 5 minutes, instances loaded to their whole SLO capacity (the peaks are the headroom);
    # minute plans, standby and the reactive path are here to be switched on, and each cost energy there.
    quantile: float = 0.9
    series: str = "peaks"  # "peaks": each minute's busiest 10 s, as a rate; "counts": each minute's requests
    headroom: float = 1.0
    epoch_s: float = 300.0
    amortize_s: float = 600.0
    lead_s: float = 95.0  # the forecast covers the epoch plus this: capacity must be asked for before it starts
    standby: bool = False
    reactive: bool = False
    # the whole load's forecast bounds the pools' summed margins above their levels
    # (planner.forecast.PoolForecasts, as the live planner's --joint-forecast)
    joint: bool = True

    def __post_init__(self) -> None:
        if self.series not in ("peaks", "counts") or not 0 < self.headroom <= 1 or not self.epoch_s >= 60:
            raise SimulateError("calibrated planning: series peaks|counts, headroom in (0, 1], epoch >= 60 s")


@dataclass(frozen=True)
class PlanEnv:
    model: Model
    gpus: int
    epoch_s: float  # the classic policies' re-plan period
    forecast: ForecastSettings
    solver: SolverSettings
    single_pool_instances: int = 0  # the iso-SLO size (0: not searched yet)
    calibrated: Calibrated = dataclasses.field(default_factory=Calibrated)
    fleet: tuple[FixedInstance, ...] = ()  # the fixed fleet the ``fixed-*`` policies run on


def epoch_of(spec: PolicySpec, env: PlanEnv) -> float | None:
    if spec.oracle:
        return MINUTE_S
    if spec.calibrated:
        return env.calibrated.epoch_s
    return env.epoch_s if spec.dynamic else None


class Planner:
    """The ``plan(now_s, running)`` the replay calls every epoch for one policy (and its forecast quality)."""

    def __init__(self, spec: PolicySpec, env: PlanEnv, work: Workload) -> None:
        self.spec, self.env, self.work = spec, env, work
        c = env.calibrated
        horizon = max(math.ceil((c.epoch_s + c.lead_s) / MINUTE_S), 1)
        self.forecasts = (
            PoolForecasts(horizon, QuantileSettings(quantile=c.quantile), joint=c.joint) if spec.calibrated else None
        )

    def __call__(self, now_s: float, running: Sequence[PlannedInstance]) -> tuple[tuple[Group, ...], Flows]:
        spec, work = self.spec, self.work
        counts = work.true_counts if (spec.oracle or not spec.typed_pools) else work.pred_counts
        if spec.oracle:
            demand = {p: _future(c, now_s) for p, c in work.true_peaks.items()}
        elif self.forecasts is not None:
            now_min = int(now_s // MINUTE_S)
            series = work.pred_peaks if self.env.calibrated.series == "peaks" else work.pred_counts
            total = work.total_peaks[:now_min] if self.env.calibrated.series == "peaks" and work.total_peaks else None
            demand = self.forecasts.forecast({p: c[:now_min] for p, c in series.items()}, total=total)
            if now_min == 0:  # no history: as if the planner had run before, on a load like the first minutes
                demand = {p: max(c[:10], default=0.0) / MINUTE_S for p, c in series.items()}
        else:
            demand = {p: _peak(spec, self.env, c, now_s) for p, c in counts.items()}
        if spec.fixed:
            return _fixed(spec, self.env, demand, running, counts)
        if spec.typed_pools:
            return _typed(spec, self.env, demand, running)
        return _single(spec, self.env, counts, now_s), {}

    def quality(self) -> dict[str, tuple[float, float, int]]:
        return self.forecasts.quality() if self.forecasts is not None else {}


def _future(series: Sequence[float], now_s: float) -> float:
    """The true demand of the minute starting now (the oracle's)."""
    now_min = int(now_s // MINUTE_S)
    return max(series[now_min : now_min + 1], default=0.0) / MINUTE_S


def _peak(spec: PolicySpec, env: PlanEnv, series: Sequence[float], now_s: float) -> float:
    """req/s to plan for in the classic policies: the trace's peak (static) or the planner's forecast."""
    horizon = max(math.ceil(env.epoch_s / MINUTE_S), 1)
    margin = 1.0 + env.forecast.margin
    if not spec.dynamic:
        return max(series, default=0.0) / MINUTE_S * margin
    now_min = int(now_s // MINUTE_S)
    if now_min < env.forecast.window_min:  # no history yet: as if the planner had run before the trace,
        # on a load like its first window (the forecast's recent peak, not the next epoch's true peak)
        return max(series[: max(env.forecast.window_min, now_min + horizon)], default=0.0) / MINUTE_S * margin
    return forecast_peak(series[:now_min], horizon, env.forecast)


def _typed(
    spec: PolicySpec, env: PlanEnv, demand: dict[str, float], running: Sequence[PlannedInstance]
) -> tuple[tuple[Group, ...], Flows]:
    profile, inv = env.model.profile, Inventory.uniform(env.gpus)
    if not spec.dynamic and not spec.all_clocks and spec.tps == (8,):
        return baseline(profile, demand, env.model.slo).groups, {}
    settings = _settings(spec, env)
    try:
        problem = make_problem(profile, demand, inv, settings, running_counts(list(running)))
    except PlannerError as exc:
        raise SimulateError(f"planner: {exc}") from exc
    problem = dataclasses.replace(problem, items=tuple(i for i in problem.items if i.tp in spec.tps))
    # the oracle's transitions are free: it may move anything; the others' plans avoid moving what they keep
    decision = solve(problem) if spec.oracle else solve_placeable(problem, running)[0]
    return decision.groups, decision.flows_rps


def _settings(spec: PolicySpec, env: PlanEnv) -> SolverSettings:
    """The solver settings of a typed policy: its clocks, period, headroom and transition costs."""
    settings = env.solver if spec.all_clocks else dataclasses.replace(env.solver, clocks=(env.model.top_clock(8),))
    epoch = epoch_of(spec, env) or env.epoch_s
    settings = dataclasses.replace(settings, period_s=epoch)
    if spec.oracle:  # transitions cost the oracle nothing
        settings = dataclasses.replace(
            settings, start_cost_j_per_gpu=0.0, reshard_cost_j_per_gpu=0.0, clock_change_cost_j=0.0
        )
    if spec.oracle or spec.calibrated:
        settings = dataclasses.replace(settings, headroom=env.calibrated.headroom)
    if spec.calibrated:
        settings = dataclasses.replace(settings, amortize_s=env.calibrated.amortize_s)
    return settings


def _fixed(
    spec: PolicySpec,
    env: PlanEnv,
    demand: dict[str, float],
    running: Sequence[PlannedInstance],
    counts: dict[str, list[float]],
) -> tuple[tuple[Group, ...], Flows]:
    """The fixed fleet's plan: per TP, the pools and clocks its instances run (the replay assigns them to the
    instances as the live planner does, ``placement.assign_fixed``). One pool: every instance serves every
    type at its TP's highest clock, weighed by its capacity; else the planner's ``plan_epoch`` with every
    instance fixed and no managed GPU."""
    if not env.fleet:
        raise SimulateError(f"policy {spec.name} needs a fixed fleet (--fixed-fleet)")
    m = env.model
    if not spec.typed_pools:
        tps: dict[int, int] = {}
        for f in env.fleet:
            tps[f.tp] = tps.get(f.tp, 0) + 1
        rate = sum(max(c, default=0.0) for c in counts.values()) / MINUTE_S
        caps = {tp: m.cap(tp, m.top_clock(tp), 4) for tp in tps}  # MM: the middle type, for the weights
        total = sum(caps[tp] * n for tp, n in tps.items()) or 1.0
        groups = []
        for tp, n in sorted(tps.items()):
            top = m.top_clock(tp)
            each = rate * caps[tp] / total
            power = m.point(tp, top, 4, min(each, m.measured_max(tp, top, 4))).power_w
            groups.append(Group(GENERIC, tp, top, n, each, power))
        return tuple(groups), {}
    # an instance in the replay's generic pool ("*") has had no pool from a plan yet: it starts from none
    assigned = [p for p in running if p.pool != GENERIC]
    try:
        plan = plan_epoch(m.profile, demand, Inventory(()), _settings(spec, env), running=assigned, fixed=env.fleet)
    except PlannerError as exc:
        raise SimulateError(f"planner: {exc}") from exc
    return plan.decision.fixed_groups, plan.decision.flows_rps


def _single(spec: PolicySpec, env: PlanEnv, counts: dict[str, list[float]], now_s: float) -> tuple[Group, ...]:
    """One generic pool: the iso-SLO static pool, or the (TP, clock) and count with the least modelled power
    that carries the forecast load."""
    m = env.model
    if spec.iso_slo:
        n = max(env.single_pool_instances, 1)
        top = m.top_clock(8)
        rate = sum(max(c, default=0.0) for c in counts.values()) / MINUTE_S / n
        return (Group(GENERIC, 8, top, n, rate, m.point(8, top, 4, min(rate, m.measured_max(8, top, 4))).power_w),)
    best: tuple[float, Group] | None = None
    minutes = len(next(iter(counts.values())))
    for tp in spec.tps:
        clock = m.top_clock(tp)
        caps = [m.cap(tp, clock, t) for t in range(len(REQUEST_TYPES))]
        if any(c <= 0 and sum(counts[p]) > 0 for c, p in zip(caps, POOL_NAMES, strict=True)):
            continue  # this TP cannot serve some type within the SLO
        util = [
            sum(counts[p][k] / MINUTE_S / c for c, p in zip(caps, POOL_NAMES, strict=True) if c > 0) * MINUTE_S
            for k in range(minutes)
        ]
        need = _peak(spec, env, util, now_s)
        count = max(math.ceil(need - 1e-9), 1)
        slots = Inventory.uniform(env.gpus).slots(tp)
        count = min(count, slots)
        if count <= 0:
            continue
        rate = sum(_peak(spec, env, counts[p], now_s) for p in POOL_NAMES) / count
        power = m.point(tp, clock, 4, min(rate, m.measured_max(tp, clock, 4))).power_w
        if best is None or power * count < best[0]:
            best = (power * count, Group(GENERIC, tp, clock, count, rate, power))
    if best is None:
        raise SimulateError("no TP of the profile serves every request type within the SLO at the highest clock")
    return (best[1],)
