"""One simulation: classify the workload (confusion matrix), size the iso-SLO baseline, replay each policy.

Replays of different policies are independent: with ``jobs`` > 1 they run in that many worker processes
(``Replays``), each replay whole in one process, so its results are the same as in a serial run. The
policies that do not use the iso-SLO size (all but ``single-pool`` and ``scale-freq``) start while the
sizing search runs when the cluster's size is given; then the search's own whole replay of the single pool at
the size it found is the ``single-pool`` result (the same replay: same pool, cluster and trace).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import starmap
from types import TracebackType
from typing import Any, Protocol

from wattgate.agent.clock_policy import DEFAULT_BURST, BurstRule
from wattgate.gateway.routing import DEFAULT_ADMISSION_WINDOW_S, DEFAULT_SPILL_ANY
from wattgate.planner.forecast import PEAK_WINDOW_S, ForecastSettings
from wattgate.planner.model import DEFAULT_HEADROOM, SolverSettings
from wattgate.profiles.classes import POOL_NAMES, ClassEdges, SloTargets
from wattgate.profiles.table import Profile
from wattgate.servingmodel.calibration import DEFAULT_ARCH, DEFAULT_ENGINE, ServingModel
from wattgate.servingmodel.cluster import Lifecycle
from wattgate.servingmodel.errors import ServingModelError
from wattgate.simulate.confusion import Confusion, Sampler
from wattgate.simulate.engine import Arrival, Behaviour, Result, replay
from wattgate.simulate.fleet import FixedFleet
from wattgate.simulate.model import CLASSES_INDEX, Model
from wattgate.simulate.policies import (
    POLICIES,
    Calibrated,
    PlanEnv,
    Planner,
    PolicySpec,
    Workload,
    epoch_of,
)
from wattgate.simulate.report import within_slo
from wattgate.simulate.trace import Request, SimulateError

LONGEST = Confusion(((0, 0, 1), (0, 0, 1), (0, 0, 1)))  # no output prediction: every request as a long one
# Without --gpus the cluster is what a capacity planner would have bought for the static baseline, with room
# for the dynamic policies (smaller TPs, make-before-break): twice its GPUs. Every GPU draws power, used or not.
AUTO_GPUS_PER_BASELINE_GPU = 2
SIZING_MAX_GPUS = 2048  # the largest cluster the iso-SLO search tries without --gpus


@dataclass(frozen=True)
class SimSettings:
    gpus: int | None = None  # None: AUTO_GPUS_PER_BASELINE_GPU x the iso-SLO baseline's GPUs, whole nodes
    epoch_s: float = 300.0
    seed: int = 0
    confusion: Confusion = field(default_factory=Confusion)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    slo: SloTargets = field(default_factory=SloTargets)
    edges: ClassEdges = field(default_factory=ClassEdges)
    solver_time_limit_s: float = 1.0
    headroom: float = DEFAULT_HEADROOM  # share of an instance's SLO capacity the planner and clock policy may use
    plan_routing: bool = True  # the gateway routes by the plan (Plan.serves); False: by the spill chain alone
    arch: str = DEFAULT_ARCH
    engine: str = DEFAULT_ENGINE
    iso_slo_target: float = 0.99  # the share of requests within their targets the baseline is sized for
    calibrated: Calibrated = field(default_factory=Calibrated)  # how wattgate plans
    fleet: FixedFleet | None = None  # the fixed fleet of the fixed-* policies; the cluster is its nodes
    admission_window_s: float = DEFAULT_ADMISSION_WINDOW_S  # the gateway's admission by the plan (0: off)
    spill_any: bool = DEFAULT_SPILL_ANY  # the gateway's work-conserving spill: a full route spills to any pool
    burst: BurstRule = DEFAULT_BURST  # the agent's burst rule, with the clock loop

    def __post_init__(self) -> None:
        if (self.gpus is not None and self.gpus < 8) or not self.epoch_s >= 60:
            raise SimulateError("--gpus must be >= 8 and --epoch-s >= 60")
        if not 0 < self.headroom <= 1:
            raise SimulateError("--headroom must be in (0, 1]")
        if not 0 < self.iso_slo_target <= 1:
            raise SimulateError("the iso-SLO target must be in (0, 1]")
        if not 0 < self.calibrated.quantile < 1 or not self.calibrated.amortize_s > 0:
            raise SimulateError("--quantile must be in (0, 1) and --amortize-s > 0")
        if self.fleet is not None and self.gpus is not None and self.gpus != self.fleet.gpus:
            raise SimulateError("--gpus and --fixed-fleet: the fixed fleet's nodes are the cluster")


class Tokens(Protocol):
    """What ``classify`` reads of a request: a workload's ``Request`` or an ``Arrival``."""

    @property
    def arrival_s(self) -> float: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...


def classify(requests: Sequence[Tokens], s: SimSettings, confusion: Confusion | None = None) -> list[Arrival]:
    """True type from the token counts; predicted type: same input class (the gateway counts input
    tokens), output class drawn from the confusion matrix row of the true output class."""
    sampler = Sampler(confusion or s.confusion, s.seed)
    edges = s.edges
    out: list[Arrival] = []
    for r in requests:
        i, o = edges.input_class(r.input_tokens), edges.output_class(r.output_tokens)
        pred = CLASSES_INDEX[i, sampler.predict(o)]
        out.append(Arrival(r.arrival_s, CLASSES_INDEX[i, o], pred, r.input_tokens, r.output_tokens))
    return out


def per_minute(arrivals: Sequence[Arrival]) -> Workload:
    minutes = math.ceil((arrivals[-1].arrival_s + 1e-9) / 60) + 1 if arrivals else 1
    windows = 60 // PEAK_WINDOW_S
    true, pred = _zeros(minutes), _zeros(minutes)
    true_burst, pred_burst = _zeros(minutes * windows), _zeros(minutes * windows)
    total_burst = [0.0] * (minutes * windows)
    for a in arrivals:
        k, w = int(a.arrival_s // 60), int(a.arrival_s // PEAK_WINDOW_S)
        t, q = POOL_NAMES[a.true_type], POOL_NAMES[a.pred_type]
        true[t][k] += 1
        pred[q][k] += 1
        true_burst[t][w] += 1
        pred_burst[q][w] += 1
        total_burst[w] += 1

    def peaks(burst: dict[str, list[float]]) -> dict[str, list[float]]:
        return {
            p: [max(b[k * windows : (k + 1) * windows]) * windows for k in range(minutes)] for p, b in burst.items()
        }

    return Workload(true, pred, peaks(true_burst), peaks(pred_burst), peaks({"*": total_burst})["*"])


def _zeros(n: int) -> dict[str, list[float]]:
    return {p: [0.0] * n for p in POOL_NAMES}


def attainment(r: Result, slo: SloTargets) -> float:
    ok = within_slo(r, slo)
    return float(ok.mean()) if len(ok) else 1.0


@dataclass
class Simulation:
    """What ``simulate`` returns: one result per policy, and how the baseline was sized."""

    results: list[Result]
    single_pool_instances: int
    single_pool_reached_target: bool
    sizing: list[tuple[int, float]]  # (instances, attainment) tried by the search
    gpus: int = 0  # the cluster replayed
    sizing_wall_s: float = 0.0  # measured: the iso-SLO search's wall time


def default_jobs() -> int:
    """The CPUs this process may run on: replays at once by default."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class _Parts:
    """What every replay of one simulation shares (handed to each worker process once)."""

    arrivals: Sequence[Arrival]
    serving: ServingModel
    model: Model
    work: Workload

    def __reduce__(self) -> tuple[Callable[..., _Parts], tuple[object, ...]]:
        # to a worker: the arrivals as five typed columns, which pickle and load far faster than a tuple each
        a = self.arrivals
        columns = (
            array("d", [x.arrival_s for x in a]),
            *(array("q", [x[f] for x in a]) for f in range(1, len(Arrival._fields))),
        )
        return _unpack_parts, (columns, self.serving, self.model, self.work)


def _unpack_parts(columns: Sequence[array[Any]], serving: ServingModel, model: Model, work: Workload) -> _Parts:
    return _Parts(list(starmap(Arrival, zip(*columns, strict=True))), serving, model, work)


_WORKER_PARTS: _Parts | None = None  # in a worker process: its simulation's parts


def _init_worker(parts: _Parts) -> None:
    global _WORKER_PARTS  # noqa: PLW0603  (one simulation per worker process, set once at its start)
    _WORKER_PARTS = parts


def _replay_parts(
    parts: _Parts, name: str, env: PlanEnv, s: SimSettings, stop_when_misses_exceed: int | None
) -> Result:
    return _replay(
        POLICIES[name],
        parts.arrivals,
        parts.serving,
        parts.model,
        env,
        parts.work,
        s,
        stop_when_misses_exceed=stop_when_misses_exceed,
    )


def _replay_in_worker(name: str, env: PlanEnv, s: SimSettings, stop_when_misses_exceed: int | None) -> Result:
    assert _WORKER_PARTS is not None, "a worker process without its simulation"
    return _replay_parts(_WORKER_PARTS, name, env, s, stop_when_misses_exceed)


class Replays:
    """Runs replays: in this process, in order, with ``jobs`` = 1; else in ``jobs`` worker processes
    (``submit``). The sizing search's replays, one after another, run in this process (``here``) while
    the workers replay the policies that do not wait for it."""

    def __init__(self, parts: _Parts, jobs: int) -> None:
        self.parts = parts
        self.pool = None
        # spawned, not forked: safe whatever threads the caller runs (a server, a test suite); a script that
        # calls ``simulate`` with jobs > 1 needs the ``if __name__ == "__main__":`` guard, as spawning requires
        if jobs > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(jobs, context, initializer=_init_worker, initargs=(parts,))

    def submit(
        self, name: str, env: PlanEnv, s: SimSettings, stop_when_misses_exceed: int | None = None
    ) -> Future[Result]:
        if self.pool is not None:
            return self.pool.submit(_replay_in_worker, name, env, s, stop_when_misses_exceed)
        done: Future[Result] = Future()
        done.set_result(self.here(name, env, s, stop_when_misses_exceed))
        return done

    def here(self, name: str, env: PlanEnv, s: SimSettings, stop_when_misses_exceed: int | None = None) -> Result:
        return _replay_parts(self.parts, name, env, s, stop_when_misses_exceed)

    def __enter__(self) -> Replays:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=exc is None, cancel_futures=True)


def simulate(
    requests: Sequence[Request],
    profile: Profile,
    policies: Sequence[str],
    s: SimSettings | None = None,
    *,
    jobs: int = 1,
    log: Callable[[str], None] = lambda _: None,
) -> Simulation:
    """Replay ``policies`` (results in their order); ``jobs``: replays at once, in worker processes when > 1."""
    s = s or SimSettings()
    _check(requests, policies, s, jobs)
    if s.fleet is not None:  # every policy runs on the fleet's nodes (the managed ones on the same GPUs)
        s = dataclasses.replace(s, gpus=s.fleet.gpus)
    try:
        serving = ServingModel(s.arch, s.engine)
    except ServingModelError as exc:
        raise SimulateError(str(exc)) from exc
    model = Model(profile, s.slo, s.headroom)
    arrivals = classify(requests, s)
    work = per_minute(arrivals)
    start_j = s.lifecycle.start_s * serving.calibration.power.idle_gpu_w(serving.max_clock_mhz)
    solver = SolverSettings(
        slo=s.slo,
        time_limit_s=s.solver_time_limit_s,
        period_s=s.epoch_s,
        headroom=s.headroom,
        start_cost_j_per_gpu=start_j,
        reshard_cost_j_per_gpu=start_j,
    )
    sim = Simulation([], 0, True, [])
    jobs = min(jobs, len(policies))
    with Replays(_Parts(arrivals, serving, model, work), jobs) as replays:
        futures: dict[str, Future[Result]] = {}

        def start(names: Sequence[str], env: PlanEnv, settings: SimSettings) -> None:
            for name in names:
                if name not in futures:
                    log(f"replaying {name}")
                    futures[name] = replays.submit(name, env, settings)

        def env_of(settings: SimSettings) -> PlanEnv:
            assert settings.gpus is not None
            fleet = settings.fleet.instances if settings.fleet is not None else ()
            return PlanEnv(
                model,
                settings.gpus,
                settings.epoch_s,
                ForecastSettings(),
                solver,
                sim.single_pool_instances,
                settings.calibrated,
                fleet,
            )

        if s.gpus is not None and jobs > 1:  # these do not wait for the iso-SLO size
            start([p for p in policies if not POLICIES[p].iso_slo], env_of(s), s)
        if s.gpus is None or any(POLICIES[p].iso_slo for p in policies):
            started = time.perf_counter()
            sizing = dataclasses.replace(s, gpus=s.gpus or SIZING_MAX_GPUS)
            env = PlanEnv(model, sizing.gpus or SIZING_MAX_GPUS, s.epoch_s, ForecastSettings(), solver)
            sized = size_single_pool(len(arrivals), replays, model, env, work, sizing, sim, log)
            sim.sizing_wall_s = time.perf_counter() - started
            if sized is not None and sizing.gpus == s.gpus and "single-pool" in policies:
                futures["single-pool"] = Future()  # the search replayed it whole on the same cluster already
                futures["single-pool"].set_result(sized)
        if s.gpus is None:
            gpus = AUTO_GPUS_PER_BASELINE_GPU * 8 * sim.single_pool_instances
            s = dataclasses.replace(s, gpus=max(16, math.ceil(gpus / 8) * 8))
            log(f"cluster: {s.gpus} GPUs ({AUTO_GPUS_PER_BASELINE_GPU} x the iso-SLO baseline's)")
        assert s.gpus is not None
        sim.gpus = s.gpus
        start(policies, env_of(s), s)
        sim.results = [futures[name].result() for name in policies]
    return sim


def _check(requests: Sequence[Request], policies: Sequence[str], s: SimSettings, jobs: int) -> None:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SimulateError(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    if not policies:
        raise SimulateError("no policy to replay")
    if not requests:
        raise SimulateError("the workload has no requests")
    if jobs < 1:
        raise SimulateError("--jobs must be >= 1")
    fixed = [p for p in policies if POLICIES[p].fixed]
    if fixed and s.fleet is None:
        raise SimulateError(f"polic{'ies' if len(fixed) > 1 else 'y'} {', '.join(fixed)} need(s) --fixed-fleet")


def _replay(  # noqa: PLR0917  (the simulation's parts, passed on from simulate)
    spec: PolicySpec,
    arrivals: Sequence[Arrival],
    serving: ServingModel,
    model: Model,
    env: PlanEnv,
    work: Workload,
    s: SimSettings,
    *,
    stop_when_misses_exceed: int | None = None,
) -> Result:
    seen = arrivals
    if spec.oracle or spec.confusion == "perfect":  # routed by the true type
        seen = [Arrival(a.arrival_s, a.true_type, a.true_type, a.input_tokens, a.output_tokens) for a in arrivals]
    elif spec.confusion == "longest":
        seen = classify(arrivals, s, LONGEST)
    if seen is not arrivals:
        again = per_minute(seen)
        work = Workload(work.true_counts, again.pred_counts, work.true_peaks, again.pred_peaks, work.total_peaks)
    lifecycle = Lifecycle(0.0, 0.0) if spec.oracle else s.lifecycle
    assert s.gpus is not None
    c = s.calibrated
    dynamic = spec.calibrated and not spec.fixed  # a fixed fleet neither sleeps nor adds instances
    behaviour = Behaviour(
        spec.clock_loop,
        s.plan_routing,
        dynamic and c.standby,
        dynamic and c.reactive,
        s.admission_window_s,
        s.burst,
        s.spill_any,
    )
    return replay(
        spec.name,
        seen,
        serving=serving,
        model=model,
        gpus=s.gpus,
        lifecycle=lifecycle,
        behaviour=behaviour,
        epoch_s=epoch_of(spec, env),
        plan=Planner(spec, env, work),
        edges=s.edges,
        stop_when_misses_exceed=stop_when_misses_exceed,
        fleet=env.fleet if spec.fixed else (),
    )


def size_single_pool(  # noqa: PLR0917  (the simulation's parts, passed on from simulate)
    requests: int,
    replays: Replays,
    model: Model,
    env: PlanEnv,
    work: Workload,
    s: SimSettings,
    sim: Simulation,
    log: Callable[[str], None],
) -> Result | None:
    """The fewest static TP8 instances at max clock that keep ``iso_slo_target`` of requests within their
    targets (attainment grows with the pool; a search over 1..gpus/8 from the peak load's size). When even
    the whole cluster does not reach it, the best size found is kept and flagged. Returns the single pool's
    replay at the size found when it ran to the end (a search replay stops once too many requests missed)."""
    spec = POLICIES["single-pool"]
    allowed = int(requests * (1.0 - s.iso_slo_target))
    cache: dict[int, float] = {}
    whole: dict[int, Result] = {}

    def ok(n: int) -> bool:
        if n not in cache:
            e = dataclasses.replace(env, single_pool_instances=n)
            r = replays.here(spec.name, e, s, stop_when_misses_exceed=allowed)
            if not r.notes:
                whole[n] = r
            cache[n] = 0.0 if r.notes else attainment(r, s.slo)
            sim.sizing.append((n, cache[n]))
            log(f"single pool of {n} TP8: {'over the miss budget' if r.notes else f'{cache[n]:.2%} within SLO'}")
        return cache[n] >= s.iso_slo_target

    top = max((s.gpus or SIZING_MAX_GPUS) // 8, 1)
    guess = min(max(_peak_instances(work, model), 1), top)
    # gallop from the guess (steps 1, 2, 4, ...) to a bracket, then bisect it: the answer is usually next to
    # the guess, and only sizes that meet the target replay whole (the others stop at the miss budget)
    lo, hi, step = 0, guess, 1  # lo fails (or is 0); hi meets the target once found
    if ok(hi):
        while hi - lo > 1:
            below = max(hi - step, lo + 1)
            if not ok(below):
                lo = below
                break
            hi, step = below, step * 2
    while not ok(hi):
        if hi == top:
            best = max(cache, key=lambda n: (cache[n], -n))
            sim.single_pool_instances, sim.single_pool_reached_target = best, False
            return whole.get(best)
        lo, hi, step = hi, min(hi + step, top), step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    sim.single_pool_instances = hi
    return whole.get(hi)


def _peak_instances(work: Workload, model: Model) -> int:
    """A first guess of the pool's size: the peak minute's load over TP8's SLO-feasible capacity per type."""
    top = model.top_clock(8)
    minutes = work.minutes
    need = 0.0
    for k in range(minutes):
        u = sum(
            work.true_counts[p][k] / 60.0 / cap for i, p in enumerate(POOL_NAMES) if (cap := model.cap(8, top, i)) > 0
        )
        need = max(need, u)
    return math.ceil(need)
