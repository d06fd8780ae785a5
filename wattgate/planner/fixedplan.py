"""Rules for a plan's fixed instances after the solve: every request type keeps somewhere to go, and the fleet
is shared out among the pools by their load.

The MILP must give every fixed instance some item, and an instance with little or no load draws about the
same power in any pool, so which pool the solve leaves the spare ones in is arbitrary: on the Azure coding
hour eight fixed TP8 servers had three idle in pools with no load while the long-input pools' two carried
the bursts. The capacity is there anyway, so ``balance_fixed`` moves instances, one at a time, from the
pool with the most spare capacity to the one with the least, while that lowers the highest planned
utilisation (load over the SLO-feasible capacity of the pool's instances): busier pools absorb the bursts
inside an epoch that a per-minute forecast cannot see. A fleet smaller than the pools the demand asks for
(two servers, three input classes) can leave a type with no pool on its spill chain, which the gateway
would refuse: ``cover_every_type`` moves one instance to a pool every such chain reaches. Both are pure
and deterministic (a re-plan of the same inputs moves nothing), and both only change pools, clocks and
planned loads of fixed instances: routing changes, never a start or a stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from wattgate.planner.model import Decision, Group, SolverSettings
from wattgate.profiles.classes import LENGTH_CLASSES, ProfilesError, RequestType, spill_chain
from wattgate.profiles.table import Profile


def balance_fixed(groups: Sequence[Group], profile: Profile, settings: SolverSettings) -> tuple[Group, ...]:
    """The fixed groups with instances moved between pools until no move lowers the highest utilisation.

    A pool gives an instance only if it keeps one (a pool with no load may give all of them). In a pool an
    instance moved into, the pool's load is shared by capacity, each instance keeps its clock and a moved
    one runs at the highest clock its TP has in that pool's plan (else its TP's highest there); its power
    is the profile's at its load. Pools no move touched keep their groups as the solve gave them."""
    cap: dict[tuple[int, str], float] = {}

    def c(tp: int, pool: str) -> float:  # cached: asked for every candidate move
        if (tp, pool) not in cap:
            cap[(tp, pool)] = _capacity(profile, settings, tp, pool)
        return cap[(tp, pool)]

    load: dict[str, float] = {}
    members: dict[str, list[Group]] = {}  # per pool, one entry per instance (count 1)
    for g in groups:
        load[g.pool] = load.get(g.pool, 0.0) + g.load_rps_each * g.count
        members.setdefault(g.pool, []).extend(replace(g, count=1) for _ in range(g.count))
    moved: set[str] = set()
    for _ in range(sum(g.count for g in groups)):
        move = _best_move(load, members, c)
        if move is None:
            break
        src, dst, inst = move
        members[src].remove(inst)
        members[dst].append(replace(inst, pool=dst, clock_mhz=-1))  # clock: chosen below
        moved.update((src, dst))
    out = [g for g in groups if g.pool not in moved]
    for pool in sorted(moved):
        out.extend(_regroup(pool, load[pool], members[pool], groups, profile, c))
    return tuple(sorted(out, key=lambda g: (g.pool, g.tp, -g.clock_mhz)))


Capacity = Callable[[int, str], float]  # (TP, pool) -> SLO-feasible req/s of one instance


def _best_move(load: dict[str, float], members: dict[str, list[Group]], cap: Capacity) -> tuple[str, str, Group] | None:
    """(from pool, to pool, instance) of the move that most lowers the busiest pool's utilisation, or None."""

    def util(pool: str, extra: float = 0.0) -> float:
        total = sum(cap(i.tp, pool) for i in members[pool]) + extra
        if load[pool] <= 0:
            return 0.0
        return load[pool] / total if total > 0 else math.inf

    busy = [p for p in sorted(members) if load[p] > 0]
    if not busy:
        return None
    dst = max(busy, key=util)
    worst = util(dst)
    best: tuple[float, str, Group] | None = None
    for src in sorted(members):
        if src == dst or not (len(members[src]) > 1 or load[src] <= 0):
            continue
        for inst in sorted(members[src], key=lambda i: (i.load_rps_each, i.tp, i.clock_mhz)):
            gain = cap(inst.tp, dst)
            if gain <= 0:
                continue
            after = max(util(dst, gain), util(src, -cap(inst.tp, src)))
            if after < worst - 1e-9 and (best is None or after < best[0] - 1e-9):
                best = (after, src, inst)
    return None if best is None else (best[1], dst, best[2])


def _regroup(  # noqa: PLR0917
    pool: str, load: float, members: list[Group], before: Sequence[Group], profile: Profile, cap: Capacity
) -> list[Group]:
    """A pool's instances regrouped by (TP, clock), its load shared by capacity."""
    total = sum(cap(i.tp, pool) for i in members)
    out: dict[tuple[int, int], Group] = {}
    for inst in members:
        clock = inst.clock_mhz
        if clock < 0:
            planned = [g.clock_mhz for g in before if g.pool == pool and g.tp == inst.tp]
            clock = max(planned) if planned else profile.clocks(inst.tp, RequestType.parse(pool))[-1]
        each = load * cap(inst.tp, pool) / total if total > 0 else 0.0
        key = (inst.tp, clock)
        if key in out:
            g = out[key]
            out[key] = replace(g, count=g.count + 1, load_rps_each=(g.load_rps_each * g.count + each) / (g.count + 1))
        else:
            out[key] = Group(pool, inst.tp, clock, 1, each, 0.0)
    return [replace(g, power_w_each=_power(profile, g.tp, g.clock_mhz, pool, g.load_rps_each)) for g in out.values()]


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
    movable = [g for g in groups if _capacity(profile, settings, g.tp, target.name) > 0]
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


def _capacity(profile: Profile, settings: SolverSettings, tp: int, pool: str) -> float:
    """SLO-feasible req/s of one instance of ``tp`` in ``pool`` at its highest clock (0: it cannot serve it)."""
    rtype = RequestType.parse(pool)
    try:
        return profile.max_load(tp, profile.clocks(tp, rtype)[-1], rtype, settings.slo)
    except ProfilesError:
        return 0.0


def _power(profile: Profile, tp: int, clock: int, pool: str, load_rps: float) -> float:
    rtype = RequestType.parse(pool)
    return profile.lookup(tp, clock, rtype, min(load_rps, profile.max_measured_load(tp, clock, rtype))).power_w
