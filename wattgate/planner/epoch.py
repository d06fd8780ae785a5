"""One epoch's plan from plain inputs: build the problem, solve it, place the managed instances and hand the
fixed ones their pool and clock. Pure (no Redis, no clock): the planner loop calls it with what the agents'
heartbeats say, the trace replay with a fleet of its own.

Fixed instances the solve leaves idle (every fixed instance must run some item, and an idle one draws about
the same power in any pool) back up the busiest pools instead of idling in an arbitrary one: the capacity
is there anyway, and a pool of more instances absorbs the bursts inside an epoch that a per-minute forecast
cannot see (``spread_spare``; on the Azure coding hour it took a fixed fleet of eight TP8 servers from
72.5% to 79.4% of requests within their targets at the same modelled energy, README "Fixed fleet").

A fleet smaller than the pools the demand asks for (two servers, three input classes) can leave a request
type with no pool anywhere on its spill chain, which the gateway would refuse: ``cover_every_type`` then
moves one fixed instance to the pool every such chain reaches, so every type has somewhere to go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.explain import running_counts
from wattgate.planner.model import Decision, FixedInstance, Group, Inventory, SolverSettings, make_problem
from wattgate.planner.placement import Placement, assign_fixed, place
from wattgate.planner.solver import solve
from wattgate.profiles.classes import LENGTH_CLASSES, ProfilesError, RequestType, spill_chain
from wattgate.profiles.table import Profile


@dataclass(frozen=True)
class EpochPlan:
    decision: Decision
    placement: Placement  # the managed instances on the inventory's GPUs
    fixed: tuple[PlannedInstance, ...]  # the fixed instances, each with the pool, clock and load the plan gives it
    left_out: tuple[str, ...]  # fixed instances the plan gives nothing (the profile has no item for their TP)

    @property
    def instances(self) -> tuple[PlannedInstance, ...]:
        return (*self.placement.instances, *self.fixed)


def plan_epoch(
    profile: Profile,
    demand_rps: Mapping[str, float],
    inventory: Inventory,
    settings: SolverSettings,
    *,
    running: Sequence[PlannedInstance] = (),
    fixed: Sequence[FixedInstance] = (),
) -> EpochPlan:
    """Plan one epoch for ``demand_rps`` (pool -> forecast req/s) on the managed ``inventory`` plus the
    ``fixed`` instances (outside the inventory: nothing is started, stopped or moved for them).

    ``running``: the previous plan's instances. A fixed instance the previous plan named starts from the pool
    and clock it gave it (else from its own ``pool``/``clock_mhz``), the others count as running managed
    instances (reconfiguration costs). Raises ``PlannerError`` on bad input."""
    ids = {f.id for f in fixed}
    before = {p.id: p for p in running if p.id in ids}
    now = tuple(
        replace(f, pool=before[f.id].pool, clock_mhz=before[f.id].sm_clock_mhz) if f.id in before else f for f in fixed
    )
    managed = [p for p in running if p.id not in ids]
    problem = make_problem(profile, demand_rps, inventory, settings, running_counts(managed), fixed=now)
    decision = solve(problem)
    fixed_groups = cover_every_type(decision, profile, settings)
    decision = replace(decision, fixed_groups=spread_spare(fixed_groups, profile, settings))
    placement = place(decision.groups, inventory, managed)
    assigned = assign_fixed(decision.fixed_groups, now)
    given = {p.id for p in assigned}
    return EpochPlan(decision, placement, assigned, tuple(sorted(f.id for f in now if f.id not in given)))


def spread_spare(groups: Sequence[Group], profile: Profile, settings: SolverSettings) -> tuple[Group, ...]:
    """Fixed groups with the idle ones (no planned load) moved, one instance at a time, to the pool with the
    most planned load per instance among those their TP can serve within the SLO. A pool's load is then
    shared over all its instances (each busy group's share scaled down alike); a moved instance runs at the
    highest clock its TP has in that pool's plan (else its TP's highest) and its power is the profile's at
    its new load. Without a busy pool nothing moves."""
    busy = [g for g in groups if g.load_rps_each > 0]
    idle = [g for g in groups if g.load_rps_each <= 0]
    load: dict[str, float] = {}
    count: dict[str, int] = {}
    for g in busy:
        load[g.pool] = load.get(g.pool, 0.0) + g.load_rps_each * g.count
        count[g.pool] = count.get(g.pool, 0) + g.count
    moved: dict[tuple[str, int], int] = {}
    kept: list[Group] = []
    for g in sorted(idle, key=lambda g: (-g.tp, g.pool, g.clock_mhz)):
        fits = [p for p in sorted(load) if _serves(profile, settings, g.tp, p)]
        if not fits:
            kept.append(g)
            continue
        for _ in range(g.count):
            pool = max(fits, key=lambda p: load[p] / count[p])
            count[pool] += 1
            moved[(pool, g.tp)] = moved.get((pool, g.tp), 0) + 1
    out = list(kept)
    for g in busy:
        share = (count[g.pool] - sum(n for (p, _), n in moved.items() if p == g.pool)) / count[g.pool]
        out.append(replace(g, load_rps_each=g.load_rps_each * share))
    for (pool, tp), n in sorted(moved.items()):
        clocks = [g.clock_mhz for g in busy if g.pool == pool and g.tp == tp]
        clock = max(clocks) if clocks else profile.clocks(tp, RequestType.parse(pool))[-1]
        each = load[pool] / count[pool]
        out.append(Group(pool, tp, clock, n, each, _power(profile, tp, clock, pool, each)))
    return tuple(sorted(out, key=lambda g: (g.pool, g.tp, -g.clock_mhz)))


def cover_every_type(decision: Decision, profile: Profile, settings: SolverSettings) -> tuple[Group, ...]:
    """The decision's fixed groups, with one instance moved when a type with demand has no planned pool on
    its spill chain: to the pool of the longest input and output classes among such types (on every one's
    chain), at its TP's highest clock there. It is taken from an idle group if there is one, else from the
    pool with the most instances, the least loaded first; a TP that cannot serve that pool is not moved."""
    groups = list(decision.fixed_groups)
    pools = {g.pool for g in (*decision.groups, *groups)}
    bare = [
        t
        for t in (RequestType.parse(n) for n, rps in decision.demand_rps.items() if rps > 0)
        if not any(q.name in pools for q in spill_chain(t))
    ]
    if not bare:
        return tuple(groups)
    rank = {c: i for i, c in enumerate(LENGTH_CLASSES)}
    target = RequestType(
        max((t.input for t in bare), key=rank.__getitem__), max((t.output for t in bare), key=rank.__getitem__)
    )
    size = {p: sum(g.count for g in groups if g.pool == p) for p in pools}
    movable = [g for g in groups if _serves(profile, settings, g.tp, target.name)]
    if not movable:
        return tuple(groups)
    source = min(movable, key=lambda g: (g.load_rps_each > 0, -size[g.pool], g.load_rps_each))
    groups.remove(source)
    if source.count > 1:
        rest = source.count - 1
        groups.append(replace(source, count=rest, load_rps_each=source.load_rps_each * source.count / rest))
    clock = profile.clocks(source.tp, target)[-1]
    load = sum(decision.demand_rps.get(t.name, 0.0) for t in bare)
    groups.append(Group(target.name, source.tp, clock, 1, load, _power(profile, source.tp, clock, target.name, load)))
    return tuple(groups)


def _serves(profile: Profile, settings: SolverSettings, tp: int, pool: str) -> bool:
    rtype = RequestType.parse(pool)
    try:
        return profile.max_load(tp, profile.clocks(tp, rtype)[-1], rtype, settings.slo) > 0
    except ProfilesError:
        return False


def _power(profile: Profile, tp: int, clock: int, pool: str, load_rps: float) -> float:
    rtype = RequestType.parse(pool)
    return profile.lookup(tp, clock, rtype, min(load_rps, profile.max_measured_load(tp, clock, rtype))).power_w
