"""The replay engine: one-second steps over a simulated cluster of GPUs (8 per node).

Requests are routed by the gateway's own ``routing.choose`` (least outstanding tokens; each type to the
pool the current plan's flows send it to, as the live gateway reads ``Plan.serves``, then the spill chain);
each one's TTFT and TBT are the profile's P99 at its instance's load and clock (so P50 figures are
pessimistic), plus a queueing delay when the instance is pushed past the highest load the profile
measured (a fluid queue). Instance power is the profile's at its load and clock, integrated every
second; starting, re-sharding and clock changes cost modelled time and energy. Everything is modelled.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wattgate.gateway.routing import Instance, InstanceSpec, Routes, choose, plan_routes, plan_weights
from wattgate.planner.contract import PlannedInstance
from wattgate.planner.explain import serves_of
from wattgate.planner.model import Group, Inventory
from wattgate.planner.placement import place
from wattgate.profiles.classes import REQUEST_TYPES
from wattgate.simulate.model import TYPE_INDEX, Costs, Model

WINDOW_S = 60  # an instance's load: its arrival rate over the last minute (the profile measured steady loads)
CLOCK_TICK_S = 5  # the agent's clock loop period
GENERIC = "*"  # the pool name of a single pool that serves every type
MODEL = "sim"


@dataclass(frozen=True)
class Arrival:
    """A request as the replay routes it: true type (for latency) and predicted type (for routing)."""

    arrival_s: float
    true_type: int
    pred_type: int
    input_tokens: int
    output_tokens: int


Flows = dict[str, dict[str, float]]  # demand pool -> serving pool -> req/s, as the planner's MILP decided
PlanFn = Callable[[float, Sequence[PlannedInstance]], tuple[tuple[Group, ...], Flows]]


class SimInstance:
    __slots__ = (
        "backlog",
        "clock",
        "counts",
        "energy_j",
        "id",
        "pool",
        "ptype",
        "ready_at",
        "retire_at",
        "ring",
        "route",
        "sec_units",
        "start_w",
        "tp",
    )

    def __init__(self, p: PlannedInstance, ready_at: float, start_w: float) -> None:
        self.id, self.pool, self.tp, self.clock = p.id, p.pool, p.tp, p.sm_clock_mhz
        self.ptype = TYPE_INDEX.get(p.pool, TYPE_INDEX["MM"])
        self.ready_at, self.retire_at, self.start_w = ready_at, math.inf, start_w
        self.backlog = 0.0  # seconds of work beyond the highest measured load (fluid queue)
        self.sec_units = 0.0
        self.counts = [0.0] * 9  # arrivals per type over the window
        self.ring = [[0.0] * 9 for _ in range(WINDOW_S)]
        self.energy_j = 0.0
        spec = InstanceSpec(
            p.id,
            "sim://" + p.id,
            frozenset({MODEL}),
            None if p.pool == GENERIC else p.pool,
            10**6,
            None,
            "registry",
            ready=ready_at <= 0,
        )
        self.route = Instance(spec)

    def planned(self) -> PlannedInstance:
        node, gpu_text, _ = self.id.split("|")
        gpus = [int(g) for g in gpu_text.split(",")]
        return PlannedInstance(self.id, self.pool, node, gpus, self.tp, self.clock, 0.0, 0.0)

    def utilisation(self, m: Model) -> float:
        """Arrival rate as a fraction of the highest measured throughput, summed over types."""
        u = 0.0
        for t, c in enumerate(self.counts):
            if c:
                u += c / (WINDOW_S * max(m.measured_max(self.tp, self.clock, t), 1e-6))
        return u

    def power_w(self, m: Model, now: float) -> float:
        if now < self.ready_at:
            return self.start_w
        u = min(self.utilisation(m), 1.0)
        total = sum(self.counts)
        if total <= 0:
            return m.point(self.tp, self.clock, self.ptype, 0.0).power_w
        return sum(
            c / total * m.point(self.tp, self.clock, t, u * m.measured_max(self.tp, self.clock, t)).power_w
            for t, c in enumerate(self.counts)
            if c
        )


@dataclass
class Result:
    """Everything one replay of one policy produced (all energy and latency figures modelled)."""

    name: str
    duration_s: int
    power_w: list[float] = field(default_factory=list)  # cluster power, one value per second
    energy_by_pool_j: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    tbt_s: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)  # when service began (>= arrival)
    finish_s: list[float] = field(default_factory=list)
    starts: int = 0
    reshards: int = 0
    stops: int = 0
    clock_changes: int = 0
    out_of_pool: int = 0
    unplaced: int = 0
    plans: int = 0
    wall_s: float = 0.0

    @property
    def energy_j(self) -> float:
        return sum(self.power_w)


class Cluster:
    """A simulated cluster replaying one policy."""

    def __init__(  # noqa: PLR0917
        self, model: Model, gpus: int, costs: Costs, clock_loop: bool, result: Result, plan_routing: bool
    ) -> None:
        self.m, self.costs, self.clock_loop, self.r = model, costs, clock_loop, result
        self.inventory = Inventory.uniform(gpus)
        self.instances: list[SimInstance] = []
        self.done: list[tuple[float, int, SimInstance]] = []  # completion heap: (finish, seq, instance)
        self.seq = 0
        self.plan_routing = plan_routing  # False: the spill chain alone (the gateway before it read plans)
        self.routes: Routes = {}
        self._extra_j = 0.0  # one-off energies (clock changes) to add to the current second

    # -- plans --------------------------------------------------------------------------------
    def apply(self, plan: tuple[tuple[Group, ...], Flows], now: float, first: bool) -> None:
        groups, flows = plan
        self.routes = plan_routes(serves_of(flows)) if self.plan_routing else {}
        live = [i for i in self.instances if i.retire_at == math.inf]
        running = [i.planned() for i in live]
        placement = place(groups, self.inventory, running)
        self.r.unplaced += placement.unplaced
        self.r.plans += 1
        by_id = {i.id: i for i in live}
        keep: set[str] = set()
        new: list[SimInstance] = []
        planned: list[tuple[SimInstance, PlannedInstance]] = []
        for p in placement.instances:
            if p.id in by_id:
                inst = by_id[p.id]
                keep.add(p.id)
                if not self.clock_loop:  # with the clock loop on, the agent leaves running clocks to it
                    self._set_clock(inst, p.sm_clock_mhz)
                planned.append((inst, p))
                continue
            iid = f"{p.node}|{','.join(map(str, p.gpus))}|{p.pool}-tp{p.tp}-{now:.0f}"
            new.append(self._start(p, iid, now, first, live))
            planned.append((new[-1], p))
        if self.plan_routing:  # the gateway weighs each instance by its planned share of its pool's load
            weights = plan_weights((inst.id, p.pool, p.load_rps) for inst, p in planned)
            for inst, _ in planned:
                inst.route.weight = weights[inst.id]
        drain_until = max((i.ready_at for i in new), default=now)
        for inst in live:
            if inst.id not in keep:
                inst.retire_at = drain_until  # make before break: serve until the new ones are ready
                self.r.stops += 0 if first else 1
        self.instances.extend(new)

    def _start(self, p: PlannedInstance, iid: str, now: float, first: bool, live: list[SimInstance]) -> SimInstance:
        planned = PlannedInstance(iid, p.pool, p.node, list(p.gpus), p.tp, p.sm_clock_mhz, p.load_rps, p.power_w)
        if first:  # the replay starts from a cluster already running its first plan
            return SimInstance(planned, -1.0, 0.0)
        c = self.costs
        reshard = any(i.pool == p.pool and i.tp != p.tp and i.id.startswith(p.node + "|") for i in live)
        secs, joules = (c.reshard_s, c.reshard_energy_j_per_gpu) if reshard else (c.start_s, c.start_energy_j_per_gpu)
        if reshard:
            self.r.reshards += 1
        else:
            self.r.starts += 1
        return SimInstance(planned, now + secs, joules * p.tp / secs if secs > 0 else 0.0)

    def _set_clock(self, inst: SimInstance, clock: int) -> None:
        if clock != inst.clock:
            inst.clock = clock
            self.r.clock_changes += 1
            self.r.energy_by_pool_j[inst.pool] = self.r.energy_by_pool_j.get(inst.pool, 0.0) + self.costs.clock_change_j
            self._extra_j += self.costs.clock_change_j

    # -- requests -----------------------------------------------------------------------------
    def _complete(self, now: float) -> None:
        while self.done and self.done[0][0] <= now:
            _, _, inst = heapq.heappop(self.done)
            inst.route.in_flight -= 1

    def route(self, a: Arrival) -> None:
        now = a.arrival_s
        self._complete(now)
        rtype = REQUEST_TYPES[a.pred_type]
        routable = [i.route for i in self.instances if i.ready_at <= now and i.retire_at > now]
        picked = choose(routable, MODEL, rtype, now, routes=self.routes)
        if picked is not None:
            inst = next(i for i in self.instances if i.route is picked[0])
        else:
            self.r.out_of_pool += 1
            alive = [i for i in self.instances if i.retire_at > now] or self.instances
            inst = min(alive, key=lambda i: (max(i.ready_at, now), i.route.in_flight))
        self._serve(inst, a, now)

    def _serve(self, inst: SimInstance, a: Arrival, now: float) -> None:
        m = self.m
        mm = max(m.measured_max(inst.tp, inst.clock, a.true_type), 1e-6)
        inst.counts[a.true_type] += 1
        inst.ring[int(now) % WINDOW_S][a.true_type] += 1
        inst.sec_units += 1.0 / mm
        u = min(inst.utilisation(m), 1.0)
        p = m.point(inst.tp, inst.clock, a.true_type, u * mm)
        begin = max(now, inst.ready_at) + max(inst.backlog - 1.0, 0.0)
        ttft = begin - now + p.ttft_p99_s
        finish = now + ttft + max(a.output_tokens - 1, 0) * p.tbt_p99_s
        r = self.r
        r.ttft_s.append(ttft)
        r.tbt_s.append(p.tbt_p99_s)
        r.types.append(a.true_type)
        r.start_s.append(begin)
        r.finish_s.append(finish)
        inst.route.in_flight += 1
        self.seq += 1
        heapq.heappush(self.done, (finish, self.seq, inst))

    # -- time ---------------------------------------------------------------------------------
    def tick(self, second: int) -> None:
        """Close second ``second``: integrate power, advance queues and windows, run the clock loop."""
        now = float(second)
        total = self._extra_j
        self._extra_j = 0.0
        energy = self.r.energy_by_pool_j
        for inst in self.instances:
            w = inst.power_w(self.m, now)
            total += w
            energy[inst.pool] = energy.get(inst.pool, 0.0) + w
            self.r.gpu_seconds += inst.tp
            inst.backlog = max(inst.backlog + inst.sec_units - 1.0, 0.0)
            inst.sec_units = 0.0
            slot = inst.ring[(second + 1) % WINDOW_S]
            for t, c in enumerate(slot):
                if c:
                    inst.counts[t] -= c
                    slot[t] = 0.0
            if inst.ready_at <= now + 1 and not inst.route.spec.ready:
                inst.route.spec = _ready(inst.route.spec)
        self.r.power_w.append(total)
        self._complete(now + 1)
        # a retired instance drains: it draws power until its last request finishes
        self.instances = [i for i in self.instances if i.retire_at > now + 1 or i.route.in_flight > 0]
        if self.clock_loop and (second + 1) % CLOCK_TICK_S == 0:
            self._clock_loop(now + 1)

    def _clock_loop(self, now: float) -> None:
        """The agent's clock policy per instance. It is asked once per request type the instance
        served in the last window (spilled and misclassified requests included) and the highest
        answer wins: the live agent judges the types the plan's ``serves`` gives the pool, each by its own rows."""
        m = self.m
        for inst in self.instances:
            if inst.ready_at > now:
                continue
            busy = inst.route.in_flight > 0
            u = inst.utilisation(m)
            present = [t for t, c in enumerate(inst.counts) if c] or [inst.ptype]
            clock = max(
                m.clock_for(REQUEST_TYPES[t], inst.tp, u * m.measured_max(inst.tp, inst.clock, t), busy)
                for t in present
            )
            self._set_clock(inst, clock)


def _ready(spec: InstanceSpec) -> InstanceSpec:
    return dataclasses.replace(spec, ready=True)


def replay(
    name: str,
    arrivals: Sequence[Arrival],
    *,
    model: Model,
    gpus: int,
    costs: Costs,
    clock_loop: bool,
    epoch_s: float | None,
    plan: PlanFn,
    plan_routing: bool = True,
) -> Result:
    """Replay ``arrivals`` (sorted) under one policy; ``plan(now, running)`` is called every epoch."""
    started = time.perf_counter()
    duration = math.ceil(arrivals[-1].arrival_s) + 1 if arrivals else 1
    r = Result(name, duration)
    cluster = Cluster(model, gpus, costs, clock_loop, r, plan_routing)
    cluster.apply(plan(0.0, []), 0.0, first=True)
    k, n = 0, len(arrivals)
    next_plan = epoch_s if epoch_s else math.inf
    for second in range(duration):
        if second >= next_plan:
            running = [i.planned() for i in cluster.instances if i.retire_at == math.inf]
            cluster.apply(plan(float(second), running), float(second), first=False)
            next_plan += epoch_s or math.inf
        while k < n and arrivals[k].arrival_s < second + 1:
            cluster.route(arrivals[k])
            k += 1
        cluster.tick(second)
    r.wall_s = time.perf_counter() - started
    return r
