"""The replay: a trace routed through the gateway's routing onto a simulated cluster of serving-model engines.

Requests are routed at their arrival by the gateway's own ``routing.choose`` (each type to the pool the
current plan sends it to, as the live gateway reads ``Plan.serves``, then its spill chain; least
outstanding tokens within a pool, weighted by the plan; with ``Behaviour.admission_window_s``, the
gateway's admission limits from the plan's loads) and run on ``servingmodel`` engines: their
TTFT and time per output token come out of the engine model (queueing, batching, KV cache,
preemption), not out of a table. The cluster (``servingmodel.cluster``) holds every GPU: idle ones
draw power, instances take time and energy to start and stop, and a new instance waits for GPUs that
a draining one still holds. Every second the engines run up to the clock and finished requests leave
the router's counts; every ``CLOCK_TICK_S`` the agent's clock policy picks each instance's SM clock,
which applies from its next engine step; with ``Behaviour.burst`` on, every second the agent's burst
rule (``clock_policy.burst_until``) holds an instance whose engine has requests waiting at its top clock
until its queue has been empty that long. Plans place new instances on free GPUs first (make before
break). With ``Behaviour.standby`` a dropped instance sleeps instead of stopping, and a plan wakes a
sleeping instance of the same TP (seconds) rather than starting one (minutes). With
``Behaviour.reactive``, every ``CLOCK_TICK_S`` the reactive path (``planner.reactive.react``, the function the
live planner runs) judges each pool by its oldest request without a first token: past half its TTFT target
the pool gets its clocks to the top, and, if that is not enough by the next check, one more instance,
without waiting for the next plan. With a fixed
``fleet`` the instances all run from the start and never stop: a plan only moves each one to a pool (a
routing change, requests in flight go on) and, without the clock loop, sets its clock
(``placement.assign_fixed``, as the live planner hands external servers their pools). Everything is
modelled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from wattgate.agent.clock_policy import DEFAULT_BURST, BurstRule, burst_until
from wattgate.gateway.routing import (
    DEFAULT_ADMISSION_WINDOW_S,
    DEFAULT_SPILL_ANY,
    InstanceSpec,
    Routes,
    admission_limit,
    by_pool,
    choose,
    pick,
    plan_routes,
    plan_weights,
)
from wattgate.gateway.routing import Instance as RouteInstance
from wattgate.planner.contract import PlannedInstance
from wattgate.planner.explain import serves_of
from wattgate.planner.model import FixedInstance, Group, Inventory
from wattgate.planner.placement import assign_fixed, place
from wattgate.planner.reactive import Member, Memory, PoolSignal, ReactSettings, react
from wattgate.profiles.classes import REQUEST_TYPES, ClassEdges, LengthClass, RequestType
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.cluster import GpuCluster, Instance, Lifecycle, State
from wattgate.servingmodel.engine import Finished
from wattgate.servingmodel.errors import ServingModelError
from wattgate.simulate.model import TYPE_INDEX, Model

WINDOW_S = 60  # an instance's load for the clock policy: its arrivals over the last minute
CLOCK_TICK_S = 5  # the agent's clock loop period (and the reactive path's)
GENERIC = "*"  # the pool name of a single pool that serves every type
MODEL = "sim"
DRAIN_LIMIT_S = 3600.0  # after the last arrival, run at most this long for the last requests to finish
REACT = ReactSettings()  # the reactive path's thresholds, the live planner's defaults
STANDBY_MAX_S = 240.0  # a sleeper past this costs more (60 W a GPU over an empty one) than a restart
REACT_PREFIX = "react-"  # ids of instances the reactive path adds: no planned load, so no admission limit
LIVE = (State.STARTING, State.WAKING, State.READY)  # instances that serve or soon will
MAX_CONCURRENCY = 10**6  # the router's concurrency bound per instance: none, in effect


class Arrival(NamedTuple):
    """A request as the replay routes it: true type (for judging) and predicted type (for routing). A named
    tuple, not a dataclass: a replay makes one per request, and hands them all to each worker process."""

    arrival_s: float
    true_type: int
    pred_type: int
    input_tokens: int
    output_tokens: int


Flows = dict[str, dict[str, float]]  # demand pool -> serving pool -> req/s, as the planner's MILP decided
PlanFn = Callable[[float, Sequence[PlannedInstance]], tuple[tuple[Group, ...], Flows]]


@dataclass(frozen=True)
class Behaviour:
    """What the cluster does between plans, besides routing (see the module docstring)."""

    clock_loop: bool = False
    plan_routing: bool = True  # False: the spill chain alone (the gateway before it read plans)
    standby: bool = False
    reactive: bool = False
    # the gateway's admission window (``routing.plan_limits``): a request spills past a pool whose instances
    # hold their planned load's worth of requests over it; 0: off
    admission_window_s: float = DEFAULT_ADMISSION_WINDOW_S
    # with the clock loop, the agent's burst rule: a queue -> top clock until it has been short a while
    burst: BurstRule = DEFAULT_BURST
    # work-conserving spill (``routing.choose``): a request whose route is full goes to any pool with room
    spill_any: bool = DEFAULT_SPILL_ANY


@dataclass
class Result:
    """Everything one replay of one policy produced (energy and latency modelled; wall time measured)."""

    name: str
    duration_s: int
    power_w: list[float] = field(default_factory=list)  # cluster power, one value per second
    energy_by_pool_j: dict[str, float] = field(default_factory=dict)  # pool "(no instance)": empty GPUs
    gpu_seconds: float = 0.0  # GPU-seconds held by instances
    ttft_s: list[float] = field(default_factory=list)  # per request, in arrival order (inf: never served)
    tbt_s: list[float] = field(default_factory=list)  # time per output token after the first (nan: one token)
    types: list[int] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)  # when the engine admitted it
    finish_s: list[float] = field(default_factory=list)
    starts: int = 0
    reshards: int = 0
    stops: int = 0
    wakes: int = 0  # instances woken from standby instead of started
    reactive_adds: int = 0  # instances the reactive path added between plans
    clock_changes: int = 0
    pool_changes: int = 0  # fixed instances moved to another pool by a plan (routing only)
    out_of_pool: int = 0
    unplaced: int = 0
    plans: int = 0
    preemptions: int = 0
    unserved: int = 0  # requests no instance could take or finish
    instances: list[int] = field(default_factory=list)  # instances held, one value per second
    forecast: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # pool -> coverage, bias, n
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def energy_j(self) -> float:
        return sum(self.power_w)


class ReplayInstance:
    """A cluster instance plus the router's view of it and its recent arrivals (for the clock policy)."""

    __slots__ = ("counts", "inst", "ring", "route")

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.route = RouteInstance(_spec(inst, ready=inst.state is State.READY))
        self.counts = [0] * len(REQUEST_TYPES)  # arrivals per type over the window
        self.ring = [[0] * len(REQUEST_TYPES) for _ in range(WINDOW_S)]

    def planned(self) -> PlannedInstance:
        i = self.inst
        return PlannedInstance(i.id, i.pool, f"node-{i.node}", list(i.gpus), i.tp, i.engine.clock_mhz, 0.0, 0.0)


def _spec(inst: Instance, ready: bool) -> InstanceSpec:
    pool = None if inst.pool == GENERIC else inst.pool
    return InstanceSpec(inst.id, "sim://" + inst.id, frozenset({MODEL}), pool, MAX_CONCURRENCY, None, "registry", ready)


class Cluster:
    """One policy's simulated cluster: plans applied, requests routed, engines run (see the module docstring)."""

    def __init__(  # noqa: PLR0917
        self,
        serving: ServingModel,
        model: Model,
        gpus: int,
        lifecycle: Lifecycle,
        behaviour: Behaviour,
        result: Result,
        edges: ClassEdges,
        arrivals: Sequence[Arrival],
        fleet: Sequence[FixedInstance] = (),
    ) -> None:
        self.m, self.b, self.r, self.edges = model, behaviour, result, edges
        self.fleet = tuple(fleet)
        self.cluster = GpuCluster(serving, nodes=max(gpus // 8, 1), lifecycle=lifecycle)
        self.inventory = Inventory.uniform(gpus)
        self.live: dict[str, ReplayInstance] = {}
        self.pending: list[PlannedInstance] = []  # planned, waiting for GPUs that draining instances hold
        self.routes: Routes = {}
        self.arrivals = arrivals
        self._where: dict[int, ReplayInstance] = {}
        self._tokens: dict[int, int] = {}
        self._pool_j: dict[str, float] = {}  # energy booked to each pool: instances gone or moved, then all at the end
        self._booked_j: dict[str, float] = {}  # per instance: its energy already booked to some pool
        self._energy_mark = 0.0
        self._slept_at: dict[str, float] = {}
        self._memory = Memory()  # the reactive path's holds and additions
        self._chosen: dict[str, int] = {}  # the clock loop's last choice per instance
        self._burst: dict[str, float] = {}  # instances the burst rule holds at the top clock -> until when
        self._routable: list[RouteInstance] | None = None  # the ready instances' routes; None: to be listed
        self._usable: list[RouteInstance] = []  # the ready ones of ``_routable``
        self._pools: dict[str | None, list[RouteInstance]] = {}  # ``_usable`` by pool
        # the replay's instances are never ejected and always healthy, and none can reach the concurrency bound
        # with fewer requests than that: every ready instance is usable, so the router's ``pick`` can skip
        # ``choose``'s filtering (the same choice)
        self._all_usable = len(arrivals) < MAX_CONCURRENCY and (not arrivals or arrivals[0].arrival_s >= 0)
        self._expected = [_expected_output(t.output, edges) for t in REQUEST_TYPES]  # per predicted type
        self.missed = 0  # finished requests that missed their targets
        n = len(arrivals)
        result.ttft_s, result.tbt_s = [math.inf] * n, [math.nan] * n
        result.types = [a.true_type for a in arrivals]
        result.start_s, result.finish_s = [math.inf] * n, [math.inf] * n

    def _in(self, *states: State) -> list[ReplayInstance]:
        return [ri for ri in self.live.values() if ri.inst.state in states]

    # -- plans --------------------------------------------------------------------------------
    def apply(self, plan: tuple[tuple[Group, ...], Flows], now: float, first: bool) -> None:
        self._routable = None
        groups, flows = plan
        self.routes = plan_routes(serves_of(flows)) if self.b.plan_routing else {}
        if self.fleet:
            self._apply_fixed(groups, now, first)
            return
        running = [ri.planned() for ri in self._in(*LIVE)]
        held = [ri.planned() for ri in self._in(State.DRAINING, State.STOPPING, State.SLEEPING)]
        placement = place(groups, self.inventory, running, held)
        # make before break: place the new instances on GPUs nobody holds now, so the ones they replace
        # serve until they are ready; only when the cluster has no room for that do they wait for the GPUs
        replaced = [p for p in running if p.id not in {q.id for q in placement.instances}]
        if replaced:
            roomy = place(groups, self.inventory, running, [*held, *replaced])
            if roomy.unplaced <= placement.unplaced:
                placement = roomy
        self.r.unplaced += placement.unplaced
        self.r.plans += 1
        weights = plan_weights((p.id, p.pool, p.load_rps) for p in placement.instances)
        self.pending = []
        for p in placement.instances:
            ri = self.live.get(p.id)
            if ri is not None and ri.inst.state in LIVE:
                if not self.b.clock_loop and p.sm_clock_mhz != ri.inst.engine.clock_mhz:  # else the loop decides
                    self._set_clock(ri, p.sm_clock_mhz, now)
                ri.route.weight, ri.route.limit = weights.get(p.id, 1.0), self._limit(p)
            elif self._wake(p, now, weights.get(p.id, 1.0)) is None:
                self.pending.append(p)
        keep = {p.id for p in placement.instances}
        for iid, ri in list(self.live.items()):
            if iid not in keep and ri.inst.state in LIVE:
                self.cluster.drain(iid, now, then_sleep=self.b.standby and not first)
                ri.route.spec = _spec(ri.inst, ready=False)
                self.r.stops += 0 if first else 1
        if placement.unplaced and self._in(State.SLEEPING):  # sleepers hold GPUs a plan needs: let them go
            for ri in self._in(State.SLEEPING):
                self.cluster.drain(ri.inst.id, now)
        self._start_pending(now, first, weights)

    def _apply_fixed(self, groups: Sequence[Group], now: float, first: bool) -> None:
        """Hand the fixed fleet's instances the plan's pools and clocks; nothing starts or stops."""
        if first:
            for f in self.fleet:
                node, top = int(f.node.removeprefix("node-")), self.m.top_clock(f.tp)
                inst = self.cluster.start(
                    f.id, pool=GENERIC, tp=f.tp, node=node, gpus=f.gpus, clock_mhz=top, now_s=now, instant=True
                )
                self.live[f.id] = ReplayInstance(inst)
        current = [
            FixedInstance(
                i.id, f"node-{i.node}", i.gpus, i.tp, None if i.pool == GENERIC else i.pool, i.engine.clock_mhz
            )
            for i in (ri.inst for ri in self.live.values())
        ]
        assigned = assign_fixed(groups, current)
        self.r.plans += 1
        self.r.unplaced += sum(g.count for g in groups) - len(assigned)
        weights = plan_weights((p.id, p.pool, p.load_rps) for p in assigned)
        for p in assigned:
            ri = self.live[p.id]
            if p.pool != ri.inst.pool:
                self.r.pool_changes += 0 if first else 1
                self._book(ri.inst)  # what it drew so far goes to the pool it served
                ri.inst.pool = p.pool
                ri.route.spec = _spec(ri.inst, ready=True)
            if first:  # the fleet was running at the plan's clocks already
                ri.inst.engine.set_clock(p.sm_clock_mhz, now)
            elif not self.b.clock_loop:  # else the loop decides
                self._set_clock(ri, p.sm_clock_mhz, now)
            ri.route.weight, ri.route.limit = weights.get(p.id, 1.0), self._limit(p)

    def _limit(self, p: PlannedInstance) -> float:
        """The admission limit the gateway gives planned instance ``p`` (``routing.admission_limit``)."""
        return admission_limit(p.load_rps, self.b.admission_window_s)

    def _wake(self, p: PlannedInstance, now: float, weight: float) -> ReplayInstance | None:
        """Serve planned instance ``p`` with a sleeping instance of its TP, if there is one (returned)."""
        sleepers = [ri for ri in self._in(State.SLEEPING) if ri.inst.tp == p.tp]
        if not sleepers:
            return None
        ri = min(sleepers, key=lambda x: self._slept_at.get(x.inst.id, now))  # the most recently asleep
        self.cluster.wake(ri.inst.id, p.pool, p.sm_clock_mhz, now)
        ri.route.spec, ri.route.weight = _spec(ri.inst, ready=False), weight
        ri.route.limit = self._limit(p) if not p.id.startswith(REACT_PREFIX) else math.inf
        self._slept_at.pop(ri.inst.id, None)
        self.r.wakes += 1
        return ri

    def _start_pending(self, now: float, first: bool, weights: dict[str, float] | None = None) -> None:
        left = []
        for p in self.pending:
            node = int(p.node.removeprefix("node-"))  # the planner's Inventory.uniform names
            if not set(p.gpus) <= self.cluster.free[node]:
                left.append(p)  # GPUs still held by an instance that drains
                continue
            self._start(p, node, now, first, weights.get(p.id, 1.0) if weights else 1.0)
        self.pending = left

    def _start(self, p: PlannedInstance, node: int, now: float, first: bool, weight: float) -> ReplayInstance:
        iid = f"{p.pool}|node-{node}|{','.join(map(str, p.gpus))}|tp{p.tp}|{now:.0f}"
        reshard = any(
            ri.inst.pool == p.pool and ri.inst.tp != p.tp and ri.inst.node == node for ri in self.live.values()
        )
        inst = self.cluster.start(
            iid, pool=p.pool, tp=p.tp, node=node, gpus=p.gpus, clock_mhz=p.sm_clock_mhz, now_s=now, instant=first
        )
        ri = ReplayInstance(inst)
        ri.route.weight, ri.route.limit = weight, self._limit(p)
        self.live[iid] = ri
        if not first:
            if reshard:
                self.r.reshards += 1
            else:
                self.r.starts += 1
        return ri

    def _set_clock(self, ri: ReplayInstance, clock: int, now: float) -> None:
        if clock != ri.inst.engine.clock_mhz:
            ri.inst.engine.set_clock(clock, now)
            self.r.clock_changes += 1

    # -- requests -----------------------------------------------------------------------------
    def route(self, k: int) -> None:
        a = self.arrivals[k]
        now = a.arrival_s
        rtype = REQUEST_TYPES[a.pred_type]
        if self._routable is None:  # instances change state only in plans and ticks, never while routing
            self._routable = [ri.route for ri in self._in(State.READY)]
            self._usable = [r for r in self._routable if r.spec.ready]
            self._pools = by_pool(self._usable)
        if self._all_usable:
            picked = pick(self._usable, rtype, self.routes, self.b.spill_any, self._pools)
        else:
            picked = choose(self._routable, MODEL, rtype, now, routes=self.routes, spill_any=self.b.spill_any)
        if picked is not None:
            ri = self.live[picked[0].id]
        else:  # nothing ready in any pool the type may use: the first instance that will be
            self.r.out_of_pool += 1
            waiting = self._in(*LIVE)
            if not waiting:
                self.r.unserved += 1
                return
            ri = min(waiting, key=lambda x: (x.inst.ready_at, x.route.in_flight))
        self._submit(ri, k, a)

    def _submit(self, ri: ReplayInstance, k: int, a: Arrival) -> None:
        # no advance to the arrival first: the engine ends its runs of decode steps at the first step that
        # starts after a waiting request arrived, so it joins the right step when the second's tick runs it
        engine = ri.inst.engine
        try:
            engine.submit(str(k), a.input_tokens, a.output_tokens, max(a.arrival_s, engine.time_s))
        except ServingModelError:
            self.r.unserved += 1  # longer than this instance can hold
            return
        tokens = a.input_tokens + self._expected[a.pred_type]
        ri.route.in_flight += 1
        ri.route.outstanding_tokens += tokens
        self._where[k], self._tokens[k] = ri, tokens
        t = a.true_type
        ri.counts[t] += 1
        ri.ring[int(a.arrival_s) % WINDOW_S][t] += 1

    # -- time ---------------------------------------------------------------------------------
    def tick(self, second: int) -> None:
        """Close second ``second``: run the cluster to its end, collect finished requests, clocks, energy."""
        end = float(second + 1)
        self._routable = None
        for _, f in self.cluster.advance(end):
            self._finished(f)
        for iid, ri in list(self.live.items()):
            state = ri.inst.state
            if state is State.STOPPED:
                self._book(self.live.pop(iid).inst)
            elif state is State.SLEEPING:
                slept = self._slept_at.setdefault(iid, end)
                if end - slept > STANDBY_MAX_S:
                    self.cluster.drain(iid, end)
            elif state is State.READY and not ri.route.spec.ready:
                ri.route.spec = _spec(ri.inst, ready=True)
        if self.pending:
            self._start_pending(end, first=False)
        for ri in self.live.values():
            slot = ri.ring[(second + 1) % WINDOW_S]
            for t, c in enumerate(slot):
                if c:
                    ri.counts[t] -= c
                    slot[t] = 0
        energy = self.cluster.energy_j
        self.r.power_w.append(energy - self._energy_mark)
        self._energy_mark = energy
        self.r.instances.append(len(self._in(*LIVE, State.DRAINING)))
        if self.b.clock_loop and self.b.burst.on:
            self._burst_check(end)
        if (second + 1) % CLOCK_TICK_S == 0:
            if self.b.clock_loop:
                self._clock_loop(end)
            if self.b.reactive:
                self._react(end)

    def _finished(self, f: Finished) -> None:
        r = self.r
        k = int(f.id)
        ri = self._where.pop(k)
        ri.route.in_flight -= 1
        ri.route.outstanding_tokens -= self._tokens.pop(k)
        r.ttft_s[k] = f.ttft_s
        r.tbt_s[k] = f.tpot_s if f.tpot_s is not None else math.nan
        r.start_s[k], r.finish_s[k] = f.arrival_s + f.queue_s, f.finish_s
        r.preemptions += f.preemptions
        if not self.m.slo.met(REQUEST_TYPES[self.arrivals[k].true_type], f.ttft_s, f.tpot_s):
            self.missed += 1

    def _clock_loop(self, now: float) -> None:
        """The agent's clock policy per ready instance, asked for every type it served in the last window
        (spilled and misclassified requests included); the highest answer wins, as the live agent judges
        every type the plan sends to the pool, each by its own profile rows."""
        m = self.m
        for ri in self._in(State.READY):
            inst = ri.inst
            if self._memory.held(inst.id, now):
                continue  # the reactive path holds it at the top clock
            load = sum(ri.counts) / WINDOW_S
            busy = ri.route.in_flight > 0
            own = TYPE_INDEX.get(inst.pool, TYPE_INDEX["MM"])
            present = [t for t, c in enumerate(ri.counts) if c] or [own]
            clock = max(m.clock_for(REQUEST_TYPES[t], inst.tp, load, busy) for t in present)
            self._chosen[inst.id] = clock
            if inst.id not in self._burst:  # else the burst rule holds it at the top clock
                self._set_clock(ri, clock, now)

    def _burst_check(self, now: float) -> None:
        """The agent's burst rule (``clock_policy.burst_until``) on each ready instance's engine queue: top
        clock while requests wait, the clock loop's choice again once the queue has been short the hold time."""
        for ri in self._in(State.READY):
            inst = ri.inst
            held = self._burst.get(inst.id)
            until = burst_until(now, inst.engine.waiting, held, self.b.burst, fixed=bool(self.fleet))
            if until is not None:
                self._burst[inst.id] = until
                self._set_clock(ri, self.m.top_clock(inst.tp), now)
            elif held is not None:
                del self._burst[inst.id]
                chosen = self._chosen.get(inst.id)
                if chosen is not None and not self._memory.held(inst.id, now):
                    self._set_clock(ri, chosen, now)

    def _react(self, now: float) -> None:
        """The reactive path (``planner.reactive.react``, as the live planner runs it) on the ready instances: the
        signal is the oldest request each pool's engines hold that has no first token yet."""
        by_pool: dict[str, list[ReplayInstance]] = {}
        for ri in self._in(State.READY):
            by_pool.setdefault(ri.inst.pool, []).append(ri)
        signals = [
            PoolSignal(
                pool,
                max((ri.inst.engine.oldest_waiting_s(now) for ri in members), default=0.0),
                self.m.slo.ttft_for(RequestType.parse(pool))
                if pool != GENERIC
                else min(self.m.slo.ttft_p99_s.values()),
                now,
                tuple(
                    Member(ri.inst.id, ri.inst.tp, ri.inst.engine.clock_mhz, self.m.top_clock(ri.inst.tp))
                    for ri in members
                ),
            )
            for pool, members in by_pool.items()
        ]
        reaction = react(signals, self._memory, now, REACT)
        self._memory = reaction.memory
        for pool in reaction.raised:
            for ri in by_pool[pool]:
                self._set_clock(ri, reaction.floors[ri.inst.id], now)
        for add in reaction.add:
            self._add(add.pool, add.tp, add.clock_mhz, now)

    def _add(self, pool: str, tp: int, clock: int, now: float) -> None:
        p = PlannedInstance(f"{REACT_PREFIX}{pool}-{now:.0f}", pool, "node-0", [], tp, clock, 0.0, 0.0)
        woken = self._wake(p, now, 1.0)
        if woken is not None:
            self._memory = self._memory.added(pool, woken.inst.id, now, REACT)
            self.r.reactive_adds += 1
            return
        held = [ri.planned() for ri in self.live.values()]
        spot = place((Group(pool, tp, clock, 1, 0.0, 0.0),), self.inventory, [], held)
        if spot.instances:
            q = spot.instances[0]
            ri = self._start(q, int(q.node.removeprefix("node-")), now, False, 1.0)
            ri.route.limit = math.inf  # no planned load: the reactive path's instances are never full
            self._memory = self._memory.added(pool, ri.inst.id, now, REACT)
            self.r.reactive_adds += 1

    def finish(self, last_second: int) -> None:
        """Run on after the last arrival until every request has finished (or ``DRAIN_LIMIT_S`` passed)."""
        second = last_second
        while self._where and second < last_second + DRAIN_LIMIT_S:
            second += 1
            self.tick(second)
        self.r.unserved += len(self._where)
        self.r.gpu_seconds = self.cluster.held_gpu_s
        for ri in self.live.values():
            self._book(ri.inst)
        self.r.energy_by_pool_j = {**self._pool_j, "(no instance)": self.cluster.empty_gpu_j}

    def _book(self, inst: Instance) -> None:
        """Book what ``inst`` drew since it was last booked to the pool it serves now."""
        fresh = inst.energy_j - self._booked_j.get(inst.id, 0.0)
        self._pool_j[inst.pool] = self._pool_j.get(inst.pool, 0.0) + fresh
        self._booked_j[inst.id] = inst.energy_j


def _expected_output(cls: LengthClass, edges: ClassEdges) -> int:
    """The router's guess of a request's output tokens from its predicted class (the gateway's midpoints)."""
    if cls is LengthClass.S:
        return edges.output_short_max // 2
    if cls is LengthClass.M:
        return (edges.output_short_max + edges.output_medium_max) // 2
    return 2 * edges.output_medium_max


def replay(
    name: str,
    arrivals: Sequence[Arrival],
    *,
    serving: ServingModel,
    model: Model,
    gpus: int,
    lifecycle: Lifecycle,
    behaviour: Behaviour,
    epoch_s: float | None,
    plan: PlanFn,
    edges: ClassEdges | None = None,
    stop_when_misses_exceed: int | None = None,
    fleet: Sequence[FixedInstance] = (),
) -> Result:
    """Replay ``arrivals`` (sorted) under one policy; ``plan(now, running)`` is called every epoch; with a
    ``fleet``, on those instances only (see the module docstring).

    ``stop_when_misses_exceed``: give up (returning what was replayed) once more requests than this have
    missed their targets — a sizing search needs no more once a size is known to fail."""
    started = time.perf_counter()
    duration = math.ceil(arrivals[-1].arrival_s) + 1 if arrivals else 1
    r = Result(name, duration)
    cluster = Cluster(serving, model, gpus, lifecycle, behaviour, r, edges or ClassEdges(), arrivals, fleet)
    cluster.apply(plan(0.0, []), 0.0, first=True)
    k, n = 0, len(arrivals)
    next_plan = epoch_s if epoch_s else math.inf
    for second in range(duration):
        if second >= next_plan:
            running = [ri.planned() for ri in cluster._in(*LIVE)]
            cluster.apply(plan(float(second), running), float(second), first=False)
            next_plan += epoch_s or math.inf
        while k < n and arrivals[k].arrival_s < second + 1:
            cluster.route(k)
            k += 1
        cluster.tick(second)
        if stop_when_misses_exceed is not None and cluster.missed > stop_when_misses_exceed:
            r.notes.append(f"stopped at {second + 1} s: more than {stop_when_misses_exceed} requests missed")
            r.wall_s = time.perf_counter() - started
            return r
    cluster.finish(duration - 1)
    quality = getattr(plan, "quality", None)
    if callable(quality):
        r.forecast = quality()
    r.wall_s = time.perf_counter() - started
    return r
