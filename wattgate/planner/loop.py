"""The planner loop: hold the leader lease, and when a period is due forecast, solve, place and publish.

A thin loop around pure parts (forecast, ``epoch.plan_epoch``, explain) with an injected clock; ``tick()``
does one step so tests run many ticks without sleeping. Redis trouble: back off, count, go on.

The GPUs to plan on are the managed agents' nodes (or ``static_nodes``); the servers that unmanaged agents
report in their heartbeats (``--external``) are fixed instances: counted as capacity, given a pool and a
clock each epoch, never started, stopped or moved.

Warm standby (``planner.standby``): on nodes whose agents can put engines to sleep, an instance a pool
re-plan drops stays asleep instead of stopping when the pool's forecast over a longer horizon (this period
plus ``standby_max_s``) is above what the plan was sized for, for at most ``standby_max_s``; a later plan
that wants its pool and TP again wakes it. When each instance went on standby is kept in memory: a new
leader counts from its first plan.

The reactive path (``reactive``: off by default): between plans, every 5 s, a pool whose requests waited too
long for their first token gets its clocks held at the top, then one more instance, as an amendment of the
current plan (``planner.amend``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from wattgate.planner.amend import ReactivePath
from wattgate.planner.baselines import IDLE_GPU_W, baseline, single_pool, single_pool_tp
from wattgate.planner.contract import LOAD_SECOND_TTL_S, Heartbeat, Plan, PlannedInstance
from wattgate.planner.epoch import plan_epoch
from wattgate.planner.explain import build_plan
from wattgate.planner.forecast import (
    DAY_MIN,
    TOTAL,
    ForecastSettings,
    PoolForecasts,
    QuantileSettings,
    forecast_peak,
    minute_peaks,
)
from wattgate.planner.model import FixedInstance, Inventory, Node, PlannerError, SolverSettings
from wattgate.planner.reactive import ReactSettings
from wattgate.planner.standby import DEFAULT_STANDBY_MAX_S, keep_asleep
from wattgate.planner.store import StoreError
from wattgate.profiles.classes import POOL_NAMES, ProfilesError, RequestType
from wattgate.profiles.table import Profile

log = logging.getLogger(__name__)


class Store(Protocol):
    def hold_lease(self, me: str, lease_s: float) -> bool: ...
    def release_lease(self, me: str) -> None: ...
    def load_minutes(self, pools: list[str], end_minute: int, count: int) -> dict[str, list[float]]: ...
    def load_seconds(self, pools: list[str], start_second: int, end_second: int) -> dict[str, float]: ...
    def load_second_counts(self, pools: list[str], start_second: int, end_second: int) -> dict[str, list[float]]: ...
    def heartbeats(self) -> list[Heartbeat]: ...
    def recent_ttfts(self, since: float) -> list[tuple[str, float, float]]: ...
    def current_plan(self) -> Plan | None: ...
    def publish(self, build: Callable[[int], Plan]) -> Plan: ...


@dataclass(frozen=True)
class LoopSettings:
    cluster_period_s: float = 1800.0
    pool_period_s: float = 300.0
    lease_s: float = 15.0
    static_nodes: tuple[Node, ...] | None = None  # None: from the agents' heartbeats
    history_min: int = DAY_MIN + 60
    min_pool_rps: float = 0.0  # forecast floor per pool: keeps a warm instance when no load is seen
    # The calibrated forecast (``QuantileForecaster``, what ``wattgate simulate``'s wattgate plans with): per
    # pool the ``quantile`` of its own past errors over the period plus ``lead_s`` (a start's time, so
    # capacity is asked for before it is needed). None: the classic forecast (``forecast``: the largest of
    # the methods, plus its margin).
    quantile: float | None = 0.9
    lead_s: float = 95.0
    # what the calibrated forecast forecasts per minute: "peaks", its busiest 10 s as a per-minute rate (from
    # the per-second windows, kept 2 h), or "counts", its requests
    series: str = "peaks"
    # the joint bound (``PoolForecasts(joint=True)``): the whole load's forecast caps the pools' summed margins
    joint: bool = True
    # the headroom the plan carries to the agents' clock policy (None: the solver's). Planning for peaks at
    # the whole capacity, the clock policy still keeps 0.8 (it judges the last minute's mean load)
    clock_headroom: float | None = None
    # longest a dropped instance stays on warm standby (nodes with sleep mode only); 0: never
    standby_max_s: float = DEFAULT_STANDBY_MAX_S
    reactive: ReactSettings | None = None  # the reactive path between plans (None: off)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    solver: SolverSettings = field(default_factory=SolverSettings)

    def __post_init__(self) -> None:
        if not (self.cluster_period_s > 0 and self.pool_period_s > 0 and self.lease_s > 0):
            raise PlannerError("periods and the lease must be > 0 seconds")
        if self.min_pool_rps < 0:
            raise PlannerError("min_pool_rps must be >= 0")
        if not self.standby_max_s >= 0:
            raise PlannerError("standby_max_s must be >= 0")
        if (self.quantile is not None and not 0 < self.quantile < 1) or self.lead_s < 0:
            raise PlannerError("the forecast quantile must be in (0, 1) and lead_s >= 0")
        if self.series not in ("peaks", "counts"):
            raise PlannerError("the forecast series is 'peaks' or 'counts'")


@dataclass
class Counters:
    ticks: int = 0
    published: int = 0
    store_errors: int = 0
    plan_errors: int = 0
    follower_ticks: int = 0
    amended: int = 0  # plan amendments the reactive path published


class PlannerLoop:
    def __init__(
        self, store: Store, profile: Profile, settings: LoopSettings, clock: Callable[[], float], me: str
    ) -> None:
        self.store, self.profile, self.settings, self.clock, self.me = store, profile, settings, clock, me
        self.counters = Counters()
        self.leader = False
        self.backoff_until = 0.0
        self._failures = 0
        self._last_cluster: float | None = None
        self._last_pool: float | None = None
        self.last_plan: Plan | None = None
        self.asleep_since: dict[str, float] = {}  # instance id -> when a plan first put it on standby
        self._forecasts: dict[int, PoolForecasts] = {}  # per horizon (minutes): the cluster and pool periods'
        self._peaks: dict[int, dict[str, float]] = {}  # minute -> pool -> its peak, read once per minute
        self._peaks_provisional: int | None = None
        self.reactive = ReactivePath(profile, settings.solver.slo, settings.reactive) if settings.reactive else None

    def tick(self) -> str:
        """One step; returns what happened: backoff, follower, idle, published, amended or error."""
        now = self.clock()
        self.counters.ticks += 1
        if now < self.backoff_until:
            return "backoff"
        try:
            return self._step(now)
        except StoreError as exc:
            self.counters.store_errors += 1
            self._back_off(now, f"Redis unavailable ({exc})")
            return "error"
        except (PlannerError, ProfilesError) as exc:  # e.g. a profile that cannot serve what is running
            self.counters.plan_errors += 1
            self._back_off(now, f"planning failed ({exc})")
            return "error"

    def _back_off(self, now: float, why: str) -> None:
        self._failures += 1
        self.backoff_until = now + min(2.0 ** min(self._failures, 5), 30.0)
        log.warning("planner: %s; retrying in %.0f s", why, self.backoff_until - now)

    def _step(self, now: float) -> str:
        held = self.store.hold_lease(self.me, self.settings.lease_s)
        self._failures = 0
        if not held:
            if self.leader:
                log.warning("planner %s lost the leader lease", self.me)
            self.leader, self._last_cluster, self._last_pool = False, None, None
            self.counters.follower_ticks += 1
            return "follower"
        if not self.leader:
            log.info("planner %s is the leader", self.me)
        self.leader = True
        s = self.settings
        if self._last_cluster is None or now - self._last_cluster >= s.cluster_period_s:
            period = s.cluster_period_s
        elif self._last_pool is None or now - self._last_pool >= s.pool_period_s:
            period = s.pool_period_s
        else:
            return self._react(now)
        plan = self._plan(now, period)
        if plan is None:  # the lease ran out while solving: another planner may lead now
            self.leader, self._last_cluster, self._last_pool = False, None, None
            return "follower"
        self.last_plan = plan
        if period == s.cluster_period_s:
            self._last_cluster = now
        self._last_pool = now
        self.counters.published += 1
        return "published"

    def _react(self, now: float) -> str:
        """Between plans: the reactive path's step when it is due; "amended" when it published an amendment."""
        if self.reactive is None or not self.reactive.due(now):
            return "idle"
        plan = self.reactive.step(self.store, self.inventory(), now)
        if plan is None:
            return "idle"
        self.last_plan = plan
        self.counters.amended += 1
        return "amended"

    def forecast(self, now: float, horizon_min: int) -> dict[str, float]:
        """Peak req/s per pool for the next ``horizon_min`` minutes, from the load windows.

        Whole minutes come from the per-minute windows (or, for the calibrated forecast of peaks, each
        minute's busiest 10 s from the per-second windows); the minute in progress from the per-second
        windows once 15 s of it have passed, so a sudden rise counts at once.
        """
        return self.forecasts(now, [horizon_min])[0]

    def forecasts(self, now: float, horizons_min: list[int]) -> list[dict[str, float]]:
        """``forecast`` for each horizon, from one read of the load windows."""
        s = self.settings
        pools = [t.name for t in self.profile.request_types if t.name in POOL_NAMES]
        minute = int(now // 60)
        total: list[float] | None = None  # the whole load's series (None: the sum of the pools')
        if s.quantile is not None and s.series == "peaks":
            series = self._minute_peaks(pools, minute)
            total = series.pop(TOTAL, None)
        else:
            series = self.store.load_minutes(pools, minute, s.history_min)
        elapsed = int(now) - minute * 60
        now_minute: dict[str, list[float]] = {}  # the minute in progress, once 15 s of it have passed
        if elapsed >= 15:
            if s.quantile is None:
                now_minute = {p: [n] for p, n in self.store.load_seconds(pools, minute * 60, int(now)).items()}
            else:
                now_minute = self.store.load_second_counts(pools, minute * 60, int(now))
        out = []
        for horizon_min in horizons_min:
            if s.quantile is None:  # the classic forecast: the minute in progress scaled to a whole minute
                whole = {p: [*series[p], *(n * 60.0 / elapsed for n in now_minute.get(p, []))] for p in pools}
                demand = {p: forecast_peak(whole[p], horizon_min, s.forecast) for p in pools}
            else:
                if horizon_min not in self._forecasts:
                    self._forecasts[horizon_min] = PoolForecasts(
                        horizon_min, QuantileSettings(quantile=s.quantile), joint=s.joint
                    )
                # whole minutes only
                demand = self._forecasts[horizon_min].forecast(series, end_minute=minute, total=total)
                for p, c in now_minute.items():  # the minute in progress can only raise it, as a rate
                    if s.series == "peaks":  # its busiest 10 s so far
                        now_rps = minute_peaks([*c, *[0.0] * (60 - len(c))])[0] / 60.0
                    else:
                        now_rps = sum(c) / elapsed
                    demand[p] = max(demand[p], now_rps)
            out.append({p: max(demand[p], s.min_pool_rps) for p in pools})
        return out

    def _minute_peaks(self, pools: list[str], minute: int) -> dict[str, list[float]]:
        """Each pool's peak per whole minute before ``minute``, as far back as the per-second windows last."""
        count = min(self.settings.history_min, LOAD_SECOND_TTL_S // 60 - 1)
        first = minute - count
        # the minute that was the last whole one at the previous read is read again: a gateway may have
        # flushed its last seconds after that read
        todo = [m for m in range(first, minute) if m not in self._peaks or m == self._peaks_provisional]
        if todo:  # one read of the minutes not seen yet (all of them only on the first plan)
            seconds = self.store.load_second_counts(pools, todo[0] * 60, minute * 60)
            # the whole load's busiest 10 s, below the sum of the pools' (their bursts do not coincide)
            if seconds:
                seconds[TOTAL] = [sum(second) for second in zip(*seconds.values(), strict=True)]
            for p, counts in seconds.items():
                for m, peak in zip(range(todo[0], minute), minute_peaks(counts), strict=True):
                    self._peaks.setdefault(m, {})[p] = peak
        self._peaks_provisional = minute - 1
        for m in [m for m in self._peaks if m < first]:
            del self._peaks[m]
        return {p: [self._peaks[m].get(p, 0.0) for m in range(first, minute)] for p in [*pools, TOTAL]}

    def horizon_min(self, period_s: float) -> int:
        """Minutes a plan for ``period_s`` must cover: the period, plus a start's lead with the calibrated one."""
        lead = self.settings.lead_s if self.settings.quantile is not None else 0.0
        return max(math.ceil((period_s + lead) / 60), 1)

    def forecast_quality(self) -> dict[str, tuple[float, float, int]]:
        """Per pool, the pool period's calibrated forecast so far: (coverage, bias, forecasts judged)."""
        f = self._forecasts.get(self.horizon_min(self.settings.pool_period_s))
        return f.quality() if f is not None else {}

    def inventory(self, beats: list[Heartbeat] | None = None) -> Inventory:
        """The managed GPUs: ``static_nodes``, else the managed agents' heartbeats (read now unless given)."""
        if self.settings.static_nodes is not None:
            return Inventory(self.settings.static_nodes)
        live = self.store.heartbeats() if beats is None else beats
        return Inventory(tuple(Node(b.node, b.gpu_count) for b in sorted(live, key=lambda b: b.node) if b.managed))

    def _plan(self, now: float, period_s: float) -> Plan | None:
        s = self.settings
        horizon_min = self.horizon_min(period_s)
        # the longer horizon: until a standby instance would be reconsidered after it aged out
        later_min = max(self.horizon_min(period_s + s.standby_max_s), horizon_min)
        demand, later = self.forecasts(now, [horizon_min, later_min])
        beats = self.store.heartbeats()
        inventory = self.inventory(beats)
        fixed, unmanaged_nodes = fixed_instances(beats, {n.name for n in inventory.nodes})
        current = self.store.current_plan()
        running = list(current.instances) if current else []
        solver = replace(s.solver, period_s=period_s)
        epoch = plan_epoch(self.profile, demand, inventory, solver, running=running, fixed=fixed)
        decision = epoch.decision
        base = baseline(self.profile, decision.demand_rps, solver.slo)
        loads = {RequestType.parse(p): rps for p, rps in decision.demand_rps.items()}
        nodes = [*inventory.nodes, *unmanaged_nodes]  # the whole cluster, for the baseline
        cluster_gpus = sum(n.gpus for n in nodes)
        tp = single_pool_tp(self.profile, (n.gpus for n in nodes))
        single = single_pool(self.profile, loads, solver.slo, cluster_gpus, tp=tp)
        extra = [] if inventory.total_gpus or fixed else ["no GPUs: no agent heartbeats and no --gpus/--nodes"]
        standby = self._standby(
            now,
            beats=beats,
            running=running,
            placed=epoch.placement.instances,
            demand=demand,
            later=later,
            fixed_ids={f.id for f in fixed},
        )

        def build(version: int) -> Plan:
            plan = build_plan(
                decision,
                epoch.placement,
                base,
                version=version,
                created_at=now,
                model=self.profile.model,
                headroom=s.clock_headroom if s.clock_headroom is not None else solver.headroom,
                single=single,
                fixed=epoch.fixed,
                left_out=epoch.left_out,
                standby=standby,
            )
            instances = self.reactive.carry(plan.instances, now) if self.reactive else plan.instances
            return replace(plan, instances=instances, alerts=[*plan.alerts, *extra])

        if not self.store.hold_lease(self.me, s.lease_s):
            log.warning("planner %s lost the lease while solving; not publishing", self.me)
            return None
        plan = self.store.publish(build)
        self.asleep_since = {p.id: self.asleep_since.get(p.id, now) for p in plan.instances if p.standby}
        log.info(
            "planner: published plan v%d (%d instances, %.0f W; single-pool baseline %s W, multi-pool baseline %.0f W; "
            "modelled)",
            plan.version,
            len(plan.instances),
            plan.predicted_power_w,
            "?" if plan.single_pool_power_w is None else f"{plan.single_pool_power_w:.0f}",
            plan.baseline_power_w,
        )
        for reason in plan.reasons:
            log.info("planner: v%d: %s", plan.version, reason)
        for alert in plan.alerts:
            log.warning("planner alert: %s", alert)
        return plan

    def wait_s(self, step_s: float) -> float:
        """How long to wait before the next tick: ``step_s``, or less when a back-off ends sooner, so the retry
        comes when the log line said (2, 4, 8 ... s), not at the next step."""
        remaining = self.backoff_until - self.clock()
        return max(0.0, min(step_s, remaining)) if remaining > 0 else step_s

    def _standby(
        self,
        now: float,
        *,
        beats: list[Heartbeat],
        running: list[PlannedInstance],
        placed: Sequence[PlannedInstance],
        demand: dict[str, float],
        later: dict[str, float],
        fixed_ids: set[str],
    ) -> tuple[PlannedInstance, ...]:
        """The previous plan's managed instances this plan keeps asleep (see the module docstring)."""
        sleep_nodes = {b.node for b in beats if b.managed and b.sleep_mode}
        may_need = {p for p, rps in later.items() if rps > demand.get(p, 0.0) * (1 + 1e-9) + 1e-9}
        return keep_asleep(
            [p for p in running if p.id not in fixed_ids],
            placed,
            sleep_nodes=sleep_nodes,
            may_need=may_need,
            asleep_since=self.asleep_since,
            now=now,
            max_s=self.settings.standby_max_s,
            sleeping_power_w=self.sleeping_power_w,
        )

    def sleeping_power_w(self, p: PlannedInstance) -> float:
        """Modelled power of an instance asleep: the profile's power at its lowest clock for the pool, extrapolated
        from its two lightest loads to no load (asleep, it holds no KV cache and runs no step: what a loaded but
        idle engine draws is an upper estimate), else 70 W a GPU."""
        try:
            rtype = RequestType.parse(p.pool)
            clock = min(self.profile.clocks(p.tp, rtype))
            loads = self.profile.loads(p.tp, clock, rtype)
            first = self.profile.lookup(p.tp, clock, rtype, loads[0]).power_w
            if len(loads) < 2 or loads[1] <= loads[0]:
                return first
            second = self.profile.lookup(p.tp, clock, rtype, loads[1]).power_w
            slope = (second - first) / (loads[1] - loads[0])
            return min(max(first - slope * loads[0], 0.0), first)
        except (ProfilesError, ValueError):
            return IDLE_GPU_W * p.tp

    def run(self, stop: threading.Event, poll_s: float | None = None) -> None:
        step = poll_s if poll_s is not None else min(self.settings.lease_s / 3, 5.0)
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(self.wait_s(step))
        finally:
            if self.leader:
                with contextlib.suppress(StoreError):
                    self.store.release_lease(self.me)


def fixed_instances(beats: list[Heartbeat], managed: set[str]) -> tuple[tuple[FixedInstance, ...], list[Node]]:
    """The unmanaged servers the heartbeats report, as fixed instances, and the unmanaged nodes (name, GPUs).
    A node that is also planned onto as a managed node (``--nodes``) keeps its servers out: its GPUs are
    the plan's. A server whose GPUs do not match its TP is left out (logged)."""
    out: list[FixedInstance] = []
    nodes: list[Node] = []
    for b in sorted(beats, key=lambda b: b.node):
        if b.managed or b.node in managed:
            continue
        nodes.append(Node(b.node, b.gpu_count))
        for u in b.unmanaged:
            if any(f.id == u.id for f in out):
                log.warning("planner: node %s reports server %s, an id another node has; left out", b.node, u.id)
                continue
            try:
                out.append(FixedInstance(str(u.id), b.node, tuple(int(g) for g in u.gpus), int(u.tp), u.pool or None))
            except (PlannerError, TypeError, ValueError) as exc:
                log.warning("planner: node %s: server %r: %s; left out", b.node, u.id, exc)
    return tuple(out), nodes


def parse_nodes(text: str) -> tuple[Node, ...]:
    nodes = []
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, count = part.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise PlannerError(f"--nodes: expected NAME=GPUS with GPUS >= 1, got {part!r}")
        nodes.append(Node(name.strip(), int(count)))
    if not nodes:
        raise PlannerError("--nodes: give at least one NAME=GPUS")
    return tuple(nodes)
