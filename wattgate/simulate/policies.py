"""The policies compared, and how each one plans: the planner's own forecast, solver and baseline code.

``single-pool`` (the baseline) and ``scale-freq`` run one static generic pool of TP8 instances, sized
iso-SLO: the fewest instances with which the replay keeps ``SimSettings.iso_slo_target`` of requests
within their targets (``run.size_single_pool`` searches it). ``scale-inst`` and ``scale-shard`` re-plan
one generic pool every epoch, sized in "instance utilisation" (the sum over types of load / SLO-feasible
capacity). Per-type policies (``multi-pool``, ``wattgate`` and its ablations, ``oracle``) run the
planner's MILP (``wattgate.planner.solver``) or its TP8 baseline per pool.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.explain import running_counts
from wattgate.planner.forecast import ForecastSettings, forecast_peak
from wattgate.planner.greedy import baseline
from wattgate.planner.model import Group, Inventory, PlannerError, SolverSettings, make_problem
from wattgate.planner.solver import solve
from wattgate.profiles.classes import POOL_NAMES, REQUEST_TYPES
from wattgate.simulate.engine import GENERIC, Flows, PlanFn
from wattgate.simulate.model import Model
from wattgate.simulate.trace import SimulateError


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
    about: str = ""


POLICIES: dict[str, PolicySpec] = {
    p.name: p
    for p in (
        PolicySpec(
            "single-pool",
            False,
            (8,),
            False,
            False,
            False,
            iso_slo=True,
            about="one static TP8 pool at max clock, iso-SLO",
        ),
        PolicySpec("multi-pool", True, (8,), False, False, False, about="per-type pools, TP8, max clock, static"),
        PolicySpec("scale-inst", False, (8,), False, True, False, about="one pool, instance count re-planned"),
        PolicySpec("scale-shard", False, (2, 4, 8), False, True, False, about="one pool, TP re-planned"),
        PolicySpec(
            "scale-freq", False, (8,), False, False, True, iso_slo=True, about="the iso-SLO pool + 5 s clock policy"
        ),
        PolicySpec("wattgate", True, (2, 4, 8), True, True, True, about="pools + forecast + MILP + clock policy"),
        PolicySpec(
            "wattgate-perfect",
            True,
            (2, 4, 8),
            True,
            True,
            True,
            confusion="perfect",
            about="wattgate, true output classes",
        ),
        PolicySpec(
            "wattgate-input-pools",
            True,
            (2, 4, 8),
            True,
            True,
            True,
            confusion="longest",
            about="wattgate without output prediction: pools per input class (every request as a long output)",
        ),
        PolicySpec("wattgate-tp8", True, (8,), True, True, True, about="wattgate without re-sharding: TP8 only"),
        PolicySpec(
            "oracle", True, (2, 4, 8), True, True, True, True, about="true future and lengths, free transitions, 1 min"
        ),
    )
}


@dataclass(frozen=True)
class Workload:
    """Per-minute request counts per type: true types, and the types the classifier predicted."""

    true_counts: dict[str, list[float]]
    pred_counts: dict[str, list[float]]
    # per minute, the busiest ``PEAK_WINDOW_S`` seconds of it as a per-minute rate (true types): what a
    # planner that knows the arrivals sizes for, bursts inside the minute included
    true_peaks: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def minutes(self) -> int:
        return len(next(iter(self.true_counts.values())))


PEAK_WINDOW_S = 10  # the oracle sizes each minute for its busiest 10 seconds
ABLATION = (
    "single-pool",
    "wattgate",
    "wattgate-perfect",
    "wattgate-input-pools",
    "scale-freq",
    "wattgate-tp8",
    "oracle",
)
ORACLE_EPOCH_S = 60.0


@dataclass(frozen=True)
class PlanEnv:
    model: Model
    gpus: int
    epoch_s: float
    forecast: ForecastSettings
    solver: SolverSettings
    single_pool_instances: int = 0  # the iso-SLO size (0: not searched yet)


def planner_for(spec: PolicySpec, env: PlanEnv, work: Workload) -> PlanFn:
    """The ``plan(now_s, running)`` function the engine calls every epoch for this policy."""

    def plan(now_s: float, running: Sequence[PlannedInstance]) -> tuple[tuple[Group, ...], Flows]:
        counts = work.true_counts if (spec.oracle or not spec.typed_pools) else work.pred_counts
        if spec.oracle and work.true_peaks:
            counts = work.true_peaks
        demand = _demand(spec, env, counts, now_s)
        if spec.typed_pools:
            return _typed(spec, env, demand, running)
        return _single(spec, env, counts, now_s), {}

    return plan


def _demand(spec: PolicySpec, env: PlanEnv, counts: dict[str, list[float]], now_s: float) -> dict[str, float]:
    return {p: _peak(spec, env, c, now_s) for p, c in counts.items()}


def _peak(spec: PolicySpec, env: PlanEnv, series: Sequence[float], now_s: float) -> float:
    """req/s to plan for: the trace's peak (static), the future peak (oracle) or the planner's forecast."""
    horizon = 1 if spec.oracle else max(math.ceil(env.epoch_s / 60), 1)
    margin = 1.0 + env.forecast.margin
    if not spec.dynamic:
        return max(series, default=0.0) / 60.0 * margin
    now_min = int(now_s // 60)
    future = series[now_min : now_min + horizon]
    if spec.oracle:  # the true peak of the next epoch, no headroom: the floor
        return max(future, default=0.0) / 60.0
    if now_min < env.forecast.window_min:  # no history yet: as if the planner had run before the trace,
        # on a load like its first window (the forecast's recent peak, not the next epoch's true peak)
        return max(series[: max(env.forecast.window_min, now_min + horizon)], default=0.0) / 60.0 * margin
    return forecast_peak(series[:now_min], horizon, env.forecast)


def _typed(
    spec: PolicySpec, env: PlanEnv, demand: dict[str, float], running: Sequence[PlannedInstance]
) -> tuple[tuple[Group, ...], Flows]:
    profile, inv = env.model.profile, Inventory.uniform(env.gpus)
    if not spec.dynamic and not spec.all_clocks and spec.tps == (8,):
        return baseline(profile, demand, env.model.slo).groups, {}
    settings = env.solver if spec.all_clocks else dataclasses.replace(env.solver, clocks=(env.model.top_clock(8),))
    settings = dataclasses.replace(settings, period_s=env.epoch_s)
    if spec.oracle:  # transitions are free for the oracle, and it re-plans every minute
        settings = dataclasses.replace(
            settings,
            period_s=ORACLE_EPOCH_S,
            start_cost_j_per_gpu=0.0,
            reshard_cost_j_per_gpu=0.0,
            clock_change_cost_j=0.0,
        )
    try:
        problem = make_problem(profile, demand, inv, settings, running_counts(list(running)))
    except PlannerError as exc:
        raise SimulateError(f"planner: {exc}") from exc
    problem = dataclasses.replace(problem, items=tuple(i for i in problem.items if i.tp in spec.tps))
    decision = solve(problem)
    return decision.groups, decision.flows_rps


def _single(spec: PolicySpec, env: PlanEnv, counts: dict[str, list[float]], now_s: float) -> tuple[Group, ...]:
    """One generic pool: the iso-SLO static pool, or the (TP, clock) and count with the least modelled power
    that carries the forecast load."""
    m = env.model
    if spec.iso_slo:
        n = max(env.single_pool_instances, 1)
        top = m.top_clock(8)
        rate = sum(max(c, default=0.0) for c in counts.values()) / 60.0 / n
        return (Group(GENERIC, 8, top, n, rate, m.point(8, top, 4, min(rate, m.measured_max(8, top, 4))).power_w),)
    best: tuple[float, Group] | None = None
    minutes = len(next(iter(counts.values())))
    for tp in spec.tps:
        clock = m.top_clock(tp)
        caps = [m.cap(tp, clock, t) for t in range(len(REQUEST_TYPES))]
        if any(c <= 0 and sum(counts[p]) > 0 for c, p in zip(caps, POOL_NAMES, strict=True)):
            continue  # this TP cannot serve some type within the SLO
        util = [
            sum(counts[p][k] / 60.0 / c for c, p in zip(caps, POOL_NAMES, strict=True) if c > 0) * 60.0
            for k in range(minutes)
        ]
        need = _peak(spec, env, util, now_s)
        count = max(math.ceil(need - 1e-9), 1)
        if count * tp > m_slots(env, tp):
            count = m_slots(env, tp) // tp
        if count <= 0:
            continue
        rate = sum(_peak(spec, env, counts[p], now_s) for p in POOL_NAMES) / count
        power = m.point(
            tp, clock, REQUEST_TYPES.index(REQUEST_TYPES[4]), min(rate, m.measured_max(tp, clock, 4))
        ).power_w
        if best is None or power * count < best[0]:
            best = (power * count, Group(GENERIC, tp, clock, count, rate, power))
    if best is None:
        raise SimulateError("no TP of the profile serves every request type within the SLO at the highest clock")
    return (best[1],)


def m_slots(env: PlanEnv, tp: int) -> int:
    return Inventory.uniform(env.gpus).slots(tp)
