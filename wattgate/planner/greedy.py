"""Plans without a MILP: turning item counts into a ``Decision`` and the greedy fallback.

The fallback always returns a plan that fits the GPUs (possibly serving only part of the load, with an
alert): the cover plan when one serving all the load fits, else a greedy one. Both load the problem's fixed
instances first (``fleet.fixed_first``) and start managed instances for the rest. The solver publishes it
when CBC fails and starts CBC from it. (The baselines, once here, are in ``planner/baselines.py``.)
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from wattgate.planner.fleet import fixed_first
from wattgate.planner.model import Config, Decision, Group, Item, Problem, SolverSettings, SolveStatus

EPS = 1e-6
GPU_PRICES_W = (0.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)  # cover_counts: W per GPU, until it fits
MAX_ROUTE_COMBINATIONS = 4096  # try every routing up to this many (9 pools, 2 spill hops: 216)
# item counts, flows, unserved, fixed item counts (per problem.fixed_items)
PlanCounts = tuple[list[int], dict[str, dict[str, float]], dict[str, float], list[int]]


def realize(  # noqa: PLR0917  (one call site per solver, all by position)
    problem: Problem,
    counts: Sequence[int],
    flows: Mapping[str, Mapping[str, float]],
    unserved: Mapping[str, float],
    status: SolveStatus,
    solve_time_s: float,
    alerts: tuple[str, ...] = (),
    fixed_counts: Sequence[int] = (),
) -> Decision:
    """Spread each pool's served load over its instances, managed and fixed, in proportion to their rated loads."""
    served: dict[str, float] = {}
    for by_pool in flows.values():
        for q, rps in by_pool.items():
            served[q] = served.get(q, 0.0) + rps
    fixed = list(zip(problem.fixed_items, fixed_counts or [0] * len(problem.fixed_items), strict=True))
    managed = list(zip(problem.items, counts, strict=True))
    rated: dict[str, float] = {}
    for it, c in (*managed, *fixed):
        rated[it.pool.name] = rated.get(it.pool.name, 0.0) + it.load_rps * c

    def groups_of(chosen: list[tuple[Item, int]]) -> tuple[Group, ...]:
        out: list[Group] = []
        for it, c in chosen:
            if c <= 0:
                continue
            q = it.pool.name
            scale = min(served.get(q, 0.0) / rated[q], 1.0) if rated[q] > 0 else 0.0
            load = it.load_rps * scale
            power = problem.profile.lookup(it.tp, it.clock_mhz, it.pool, load).power_w
            out.append(Group(q, it.tp, it.clock_mhz, c, load, power))
        return tuple(sorted(out, key=lambda g: (g.pool, -g.tp, -g.clock_mhz, -g.load_rps_each)))

    left = {r: v for r, v in unserved.items() if v > EPS}
    if left:
        total = sum(left.values())
        detail = ", ".join(f"{r} {v:.2f}" for r, v in sorted(left.items()))
        alerts = (
            *alerts,
            f"GPU budget of {problem.inventory.total_gpus} GPUs cannot serve the forecast load within the SLOs: "
            f"{total:.2f} req/s unserved ({detail}); this is the best partial plan",
        )
    clean_flows = {r: {q: v for q, v in by.items() if v > EPS} for r, by in flows.items()}
    return Decision(
        groups=groups_of(managed),
        demand_rps=dict(problem.demand_rps),
        flows_rps=clean_flows,
        unserved_rps=left,
        gpu_budget=problem.inventory.total_gpus,
        status=status,
        solve_time_s=solve_time_s,
        alerts=alerts,
        fixed_groups=groups_of(fixed),
    )


def greedy_solve(problem: Problem) -> Decision:
    """The fallback plan (``greedy_counts``) as a decision; never fails."""
    started = time.perf_counter()
    counts, flows, unserved, fixed = greedy_counts(problem)
    return realize(problem, counts, flows, unserved, SolveStatus.FALLBACK, time.perf_counter() - started, (), fixed)


def greedy_counts(problem: Problem) -> PlanCounts:
    """The fallback plan as item counts, flows and unserved load (also the MILP's warm start).

    The cover plan (``cover_counts``) when it fits the GPUs: it serves all the load, and for each pool
    no greedy order below draws less. Else (the budget binds) two greedy orders, cheapest power per
    req/s and most req/s per GPU, keeping the one that serves more, then draws less.
    """
    cover = cover_counts(problem)
    if cover is not None:
        return cover
    best: tuple[float, float, PlanCounts] | None = None
    for per_gpu in (False, True):
        plan = _greedy(problem, per_gpu)
        counts, _, unserved, _ = plan
        power = sum(it.power_w * c for it, c in zip(problem.items, counts, strict=True))
        score = (sum(unserved.values()), power)
        if best is None or score < best[:2]:
            best = (*score, plan)
    assert best is not None
    return best[2]


def cover_counts(problem: Problem) -> PlanCounts | None:
    """A near-optimal plan when the GPU budget allows it (the MILP's warm start): each type's load on
    one of its routes, each pool's load covered by ``k`` instances of one item plus one finishing item
    (or, re-planning, by its running instances plus such a cover of what they miss), the routes and
    covers of least power + reconfiguration + spill cost. When that does not fit the GPUs, each GPU is
    priced ever higher (a Lagrangian price) until a plan fits; None if none does."""
    demand = {r: d for r, d in problem.demand_rps.items() if d > 0 and problem.routes(r)}
    per_gpu = {
        q: max((it.load_rps / it.tp for it in problem.items if it.pool.name == q), default=EPS) for q in problem.pools
    }
    need = sum(d / max(per_gpu[q] for q in problem.routes(r)) for r, d in demand.items())
    if not problem.fixed_items and need > problem.inventory.total_gpus:
        return None  # no plan serving all the load fits, whatever the price
    index = {id(it): k for k, it in enumerate(problem.items)}
    for price in GPU_PRICES_W:
        covers = {q: _PoolCover(problem, q, price) for q in problem.pools}
        route = _least_cost_routes(
            problem, demand, functools.partial(_route_cost, demand=demand, covers=covers, problem=problem)
        )
        loads = _loads(route, demand)
        fill = fixed_first(problem, loads)
        counts = [0] * len(problem.items)
        for q, load in loads.items():
            rest = load - fill.credit_rps.get(q, 0.0)
            cost, plan = covers[q].best(max(rest, 0.0))
            if math.isinf(cost):
                break  # no managed item of this pool carries what the fixed instances leave
            for it, m in plan:
                counts[index[id(it)]] += m
        else:
            if _fits(problem, counts):
                flows = {r: {q: demand[r]} for r, q in route.items()}
                unserved = {r: d for r, d in problem.demand_rps.items() if d > 0 and r not in demand}
                return counts, flows, unserved, list(fill.counts)
    return None


def _fits(problem: Problem, counts: Sequence[int]) -> bool:
    """The MILP's GPU constraint: for each TP size t, groups of >= t GPUs within the t-aligned slots."""
    for t in {it.tp for it in problem.items}:
        used = sum(it.tp * c for it, c in zip(problem.items, counts, strict=True) if it.tp >= t)
        if used > problem.inventory.slots(t):
            return False
    return True


def _route_cost(
    route: Mapping[str, str], demand: Mapping[str, float], covers: Mapping[str, _PoolCover], problem: Problem
) -> float:
    spill = sum(demand[r] for r, q in route.items() if q != r)
    loads = _loads(route, demand)
    fill = fixed_first(problem, loads) if problem.fixed_items else None
    if fill is None:
        managed = sum(covers[q].best(load)[0] for q, load in loads.items())
    else:
        rest = {q: max(load - fill.credit_rps.get(q, 0.0), 0.0) for q, load in loads.items()}
        managed = sum(covers[q].best(v)[0] for q, v in rest.items()) + fill.power_w(problem)
    return managed + problem.settings.spill_cost_w_per_rps * spill


def _loads(route: Mapping[str, str], demand: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in sorted(route):  # a fixed order: the same routes give the same float loads
        out[route[r]] = out.get(route[r], 0.0) + demand[r]
    return out


def _least_cost_routes(
    problem: Problem, demand: Mapping[str, float], cost: Callable[[Mapping[str, str]], float]
) -> dict[str, str]:
    types = sorted(demand)
    options = [problem.routes(r) for r in types]
    if math.prod(len(o) for o in options) <= MAX_ROUTE_COMBINATIONS:
        combos = (dict(zip(types, c, strict=True)) for c in itertools.product(*options))
        return min(combos, key=cost)
    route = {r: o[0] for r, o in zip(types, options, strict=True)}
    best, improved = cost(route), True
    while improved:
        improved = False
        for r, opts in zip(types, options, strict=True):
            for q in opts:
                trial = {**route, r: q}
                c = cost(trial)
                if c < best - EPS:
                    route, best, improved = trial, c, True
    return route


Cover = tuple[float, tuple[tuple[Item, int], ...]]  # (cost W, ((item, count), ...))


class _PoolCover:
    """Least-cost covers of a load by one pool's items: ``k`` x item ``a`` + one finishing item, or (re-planning)
    the pool's running instances, some let go or a cover of the rest added. Cost: power + ``price`` per GPU
    + the reconfiguration from the running instances, as the MILP prices it."""

    def __init__(self, problem: Problem, pool: str, price_w_per_gpu: float) -> None:
        self.settings, self.price = problem.settings, price_w_per_gpu
        self.items = sorted((it for it in problem.items if it.pool.name == pool), key=lambda it: it.load_rps)
        self.loads = [it.load_rps for it in self.items]
        self.finisher: list[Item] = []  # finisher[i]: least power + price (then fewest GPUs) among items[i:]
        for it in reversed(self.items):
            best = self.finisher[-1] if self.finisher else it
            self.finisher.append(it if (self._unit(it), it.tp) <= (self._unit(best), best.tp) else best)
        self.finisher.reverse()
        self.current = {c: m for c, m in problem.current.items() if c[0] == pool}
        top: dict[Config, Item] = {}
        for it in self.items:  # the running instances at their config's top rating
            if it.config in self.current and (it.config not in top or it.load_rps > top[it.config].load_rps):
                top[it.config] = it
        self.running = [it for c, it in top.items() for _ in range(self.current[c])]
        self.memo: dict[float, Cover] = {}
        self.units = {id(it): self._unit(it) for it in self.items}  # every plan's items are the pool's

    def _unit(self, it: Item) -> float:
        return it.power_w + self.price * it.tp

    def best(self, load: float) -> Cover:
        if load not in self.memo:
            fresh = [] if load <= EPS else [c for a in self.items for c in self._with(a, load)]
            plans = sorted(((self._base(c), c) for c in (*fresh, *self._from_running(load))), key=lambda bc: bc[0])
            best: Cover = (math.inf, ()) if plans or load > EPS else (0.0, ())
            for base, plan in plans:  # reconfiguration costs >= 0: stop once the base alone costs more
                if base >= best[0]:
                    break
                cost = base + self._reconfiguration(plan)
                if cost < best[0]:
                    best = (cost, plan)
            self.memo[load] = best
        return self.memo[load]

    def _with(self, a: Item, load: float) -> Iterator[tuple[tuple[Item, int], ...]]:
        full = math.floor(load / a.load_rps + EPS)
        for k in range(full, -1, -1):
            rest = load - k * a.load_rps
            if rest <= EPS:
                yield ((a, k),)
                continue
            i = bisect.bisect_left(self.loads, rest - EPS)
            if i == len(self.items):
                return  # fewer copies of ``a`` leave more than any one item carries
            yield ((a, k), (self.finisher[i], 1)) if k else ((self.finisher[i], 1),)

    def _from_running(self, load: float) -> Iterator[tuple[tuple[Item, int], ...]]:
        if not self.running:
            return
        keep = sorted(self.running, key=self._unit)  # let the costliest go while the rest carry the load
        while keep and sum(it.load_rps for it in keep[:-1]) >= load - EPS:
            keep.pop()
        rest = load - sum(it.load_rps for it in keep)
        kept = tuple((it, 1) for it in keep)
        if rest <= EPS:
            yield kept
        else:
            for a in self.items:
                for extra in self._with(a, rest):
                    yield kept + extra

    def _base(self, plan: tuple[tuple[Item, int], ...]) -> float:
        units = self.units
        total: float = 0  # as sum() adds: from int 0, in order (the same floats)
        for it, m in plan:
            total += units[id(it)] * m
        return total

    def _reconfiguration(self, plan: tuple[tuple[Item, int], ...]) -> float:
        if not self.current:
            return 0.0
        new: dict[Config, int] = {}
        for it, m in plan:
            new[it.config] = new.get(it.config, 0) + m
        return reconfiguration_w(self.settings, new, self.current)


def reconfiguration_w(s: SolverSettings, new: Mapping[Config, int], old: Mapping[Config, int]) -> float:
    """The MILP's reconfiguration cost (W over the period, >= 0) of moving one pool from ``old`` to ``new`` counts.

    One difference: the MILP's re-shard room counts instances, so it may "restart" a small running
    instance to count a start more than twice its size as a re-shard; this prices what really happens."""
    by_tp: dict[int, set[Config]] = {}
    for c in (*new, *old):
        by_tp.setdefault(c[1], set()).add(c)
    energy_j, room, started = 0.0, 0, {}
    for tp, cfgs in by_tp.items():
        n, o = sum(new.get(c, 0) for c in cfgs), sum(old.get(c, 0) for c in cfgs)
        started[tp], room = max(n - o, 0), room + max(o - n, 0)
        moved = sum(max(new.get(c, 0) - old.get(c, 0), 0) for c in cfgs)
        energy_j += s.clock_change_cost_j * max(moved - started[tp], 0) + s.start_cost_j_per_gpu * tp * started[tp]
    saving_j_per_gpu = s.start_cost_j_per_gpu - s.reshard_cost_j_per_gpu
    for tp in sorted(started, reverse=True):  # re-shard into the largest groups first: they save the most
        resharded = min(started[tp], room) if saving_j_per_gpu > 0 else 0
        room -= resharded
        energy_j -= saving_j_per_gpu * tp * resharded
    return energy_j / s.amortization_s


def keep_current(problem: Problem) -> PlanCounts | None:
    """The running plan as item counts (each instance at its config's top rating), if it still serves all
    (fixed instances keep their config too; one without any is a spare of the pool it serves now)."""
    if not problem.current and not problem.fixed_current:
        return None
    fill = fixed_first(problem, {}, keep=True)
    counts = [0] * len(problem.items)
    top: dict[tuple[str, int, int], int] = {}
    for k, it in enumerate(problem.items):
        if it.config not in top or it.load_rps > problem.items[top[it.config]].load_rps:
            top[it.config] = k
    for config, m in problem.current.items():
        if config in top:
            counts[top[config]] += m
    room: dict[str, float] = dict(fill.credit_rps)
    for it, c in zip(problem.items, counts, strict=True):
        room[it.pool.name] = room.get(it.pool.name, 0.0) + it.load_rps * c
    flows: dict[str, dict[str, float]] = {}
    # pools with the fewest alternatives take their room first
    for r in sorted(problem.demand_rps, key=lambda r: (len(problem.routes(r)), r)):
        left = problem.demand_rps[r]
        whole = [q for q in problem.routes(r) if room.get(q, 0.0) >= left - EPS]
        if whole and left > 0:  # all of it on one route, as the MILP routes it
            flows[r] = {whole[0]: left}
            room[whole[0]] -= left
            continue
        for q in problem.routes(r):
            take = min(left, room.get(q, 0.0))
            if take > 0:
                flows.setdefault(r, {})[q] = take
                room[q] -= take
                left -= take
        if left > EPS:
            return None
    return counts, flows, {}, list(fill.counts)


def _greedy(problem: Problem, per_gpu: bool) -> PlanCounts:
    free = [n.gpus for n in problem.inventory.nodes]
    counts = [0] * len(problem.items)
    flows: dict[str, dict[str, float]] = {}
    unserved: dict[str, float] = {}
    # each type on its first route: its own pool, or the first longer pool that can meet its SLO
    first = {r: problem.routes(r)[0] for r, d in problem.demand_rps.items() if d > 0 and problem.routes(r)}
    fill = fixed_first(problem, _loads(first, problem.demand_rps))
    room = dict(fill.credit_rps)  # what the fixed instances carry, taken before any managed instance
    for r, demand in sorted(problem.demand_rps.items(), key=lambda kv: -kv[1]):
        if demand <= 0:
            continue
        if r not in first:
            unserved[r] = demand
            continue
        q = first[r]
        on_fixed = min(demand, room.get(q, 0.0))
        room[q] = room.get(q, 0.0) - on_fixed
        left = _fill(problem, q, demand - on_fixed, free, counts, per_gpu=per_gpu)
        flows[r] = {q: demand - left}
        if left > EPS:
            unserved[r] = left
    return counts, flows, unserved, list(fill.counts)


def _fill(problem: Problem, pool: str, load: float, free: list[int], counts: list[int], *, per_gpu: bool) -> float:
    """Add instances of ``pool`` until ``load`` is covered or nothing fits; return what is left."""
    cands = [(k, it) for k, it in enumerate(problem.items) if it.pool.name == pool]
    while load > EPS:
        room = max(free, default=0)  # a TP group fits somewhere iff it fits in the freest node
        fits = [(k, it) for k, it in cands if it.tp <= room]
        if not fits:
            return load
        finishing = [(k, it) for k, it in fits if it.load_rps >= load - EPS]
        if finishing:
            k, it = min(finishing, key=lambda kv: (kv[1].power_w, kv[1].tp))
        elif per_gpu:
            k, it = max(fits, key=lambda kv: (kv[1].load_rps / kv[1].tp, -kv[1].power_w))
        else:
            k, it = min(fits, key=lambda kv: (kv[1].power_w / kv[1].load_rps, -kv[1].load_rps))
        node = _slot(free, it.tp)
        assert node is not None
        free[node] -= it.tp
        counts[k] += 1
        load -= it.load_rps
    return 0.0


def _slot(free: list[int], tp: int) -> int | None:
    """Best fit: the node with the fewest free GPUs that still holds a TP group of ``tp``."""
    ok = [(f, i) for i, f in enumerate(free) if f >= tp]
    return min(ok)[1] if ok else None


# the baselines lived here before planner/baselines.py: kept importable from here for callers of that time
from wattgate.planner.baselines import (  # noqa: E402
    IDLE_GPU_W,
    SINGLE_POOL_TP,
    Baseline,
    SinglePool,
    baseline,
    single_pool,
    single_pool_tp,
)

__all__ = [
    "IDLE_GPU_W",
    "SINGLE_POOL_TP",
    "Baseline",
    "SinglePool",
    "baseline",
    "cover_counts",
    "greedy_counts",
    "greedy_solve",
    "keep_current",
    "realize",
    "reconfiguration_w",
    "single_pool",
    "single_pool_tp",
]
