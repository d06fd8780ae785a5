"""Plans without a MILP: turning item counts into a ``Decision``, the greedy fallback, and the baseline.

The fallback always returns a plan that fits the GPUs (possibly serving only part of the load, with an
alert): the cover plan when one serving all the load fits, else a greedy one. The solver publishes it
when CBC fails and starts CBC from it. The baseline is what wattgate is compared with: every pool on TP8
instances at the highest measured clock, sized for its load.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from wattgate.planner.model import Config, Decision, Group, Item, Problem, SolverSettings, SolveStatus
from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile

EPS = 1e-6
GPU_PRICES_W = (0.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)  # cover_counts: W per GPU, until it fits
MAX_ROUTE_COMBINATIONS = 4096  # try every routing up to this many (9 pools, 2 spill hops: 216)
PlanCounts = tuple[list[int], dict[str, dict[str, float]], dict[str, float]]  # item counts, flows, unserved


def realize(  # noqa: PLR0917  (one call site per solver, all by position)
    problem: Problem,
    counts: Sequence[int],
    flows: Mapping[str, Mapping[str, float]],
    unserved: Mapping[str, float],
    status: SolveStatus,
    solve_time_s: float,
    alerts: tuple[str, ...] = (),
) -> Decision:
    """Spread each pool's served load over its instances in proportion to their rated loads."""
    served: dict[str, float] = {}
    for by_pool in flows.values():
        for q, rps in by_pool.items():
            served[q] = served.get(q, 0.0) + rps
    rated: dict[str, float] = {}
    for it, c in zip(problem.items, counts, strict=True):
        rated[it.pool.name] = rated.get(it.pool.name, 0.0) + it.load_rps * c
    groups: list[Group] = []
    for it, c in zip(problem.items, counts, strict=True):
        if c <= 0:
            continue
        q = it.pool.name
        scale = min(served.get(q, 0.0) / rated[q], 1.0) if rated[q] > 0 else 0.0
        load = it.load_rps * scale
        power = problem.profile.lookup(it.tp, it.clock_mhz, it.pool, load).power_w
        groups.append(Group(q, it.tp, it.clock_mhz, c, load, power))
    groups.sort(key=lambda g: (g.pool, -g.tp, -g.clock_mhz, -g.load_rps_each))
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
        groups=tuple(groups),
        demand_rps=dict(problem.demand_rps),
        flows_rps=clean_flows,
        unserved_rps=left,
        gpu_budget=problem.inventory.total_gpus,
        status=status,
        solve_time_s=solve_time_s,
        alerts=alerts,
    )


def greedy_solve(problem: Problem) -> Decision:
    """The fallback plan (``greedy_counts``) as a decision; never fails."""
    started = time.perf_counter()
    counts, flows, unserved = greedy_counts(problem)
    return realize(problem, counts, flows, unserved, SolveStatus.FALLBACK, time.perf_counter() - started)


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
        counts, flows, unserved = _greedy(problem, per_gpu)
        power = sum(it.power_w * c for it, c in zip(problem.items, counts, strict=True))
        score = (sum(unserved.values()), power)
        if best is None or score < best[:2]:
            best = (*score, (counts, flows, unserved))
    assert best is not None
    return best[2]


def cover_counts(problem: Problem) -> PlanCounts | None:
    """A near-optimal plan when the GPU budget allows it (the MILP's warm start): each type's load on
    one of its routes, each pool's load covered by ``k`` instances of one item plus one finishing item
    (or, re-planning, by its running instances plus such a cover of what they miss), the routes and
    covers of least power + reconfiguration + spill cost. When that does not fit the GPUs, each GPU is
    priced ever higher (a Lagrangian price) until a plan fits; None if none does."""
    demand = {r: d for r, d in problem.demand_rps.items() if d > 0 and problem.routes(r)}
    per_gpu = {q: max(it.load_rps / it.tp for it in problem.items if it.pool.name == q) for q in problem.pools}
    if sum(d / max(per_gpu[q] for q in problem.routes(r)) for r, d in demand.items()) > problem.inventory.total_gpus:
        return None  # no plan serving all the load fits, whatever the price
    index = {id(it): k for k, it in enumerate(problem.items)}
    for price in GPU_PRICES_W:
        covers = {q: _PoolCover(problem, q, price) for q in problem.pools}
        route = _least_cost_routes(
            problem, demand, functools.partial(_route_cost, demand=demand, covers=covers, problem=problem)
        )
        counts = [0] * len(problem.items)
        for q, load in _loads(route, demand).items():
            for it, m in covers[q].best(load)[1]:
                counts[index[id(it)]] += m
        if _fits(problem, counts):
            flows = {r: {q: demand[r]} for r, q in route.items()}
            unserved = {r: d for r, d in problem.demand_rps.items() if d > 0 and r not in demand}
            return counts, flows, unserved
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
    return sum(covers[q].best(load)[0] for q, load in loads.items()) + problem.settings.spill_cost_w_per_rps * spill


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

    def _unit(self, it: Item) -> float:
        return it.power_w + self.price * it.tp

    def best(self, load: float) -> Cover:
        if load not in self.memo:
            fresh = [] if load <= EPS else [c for a in self.items for c in self._with(a, load)]
            plans = sorted(((self._base(c), c) for c in (*fresh, *self._from_running(load))), key=lambda bc: bc[0])
            best: Cover = (math.inf, ()) if plans else (0.0, ())
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
        return sum((it.power_w + self.price * it.tp) * m for it, m in plan)

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
    """The running plan as item counts (each instance at its config's top rating), if it still serves all."""
    if not problem.current:
        return None
    counts = [0] * len(problem.items)
    top: dict[tuple[str, int, int], int] = {}
    for k, it in enumerate(problem.items):
        if it.config not in top or it.load_rps > problem.items[top[it.config]].load_rps:
            top[it.config] = k
    for config, m in problem.current.items():
        if config in top:
            counts[top[config]] += m
    room: dict[str, float] = {}
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
    return counts, flows, {}


def _greedy(problem: Problem, per_gpu: bool) -> PlanCounts:
    free = [n.gpus for n in problem.inventory.nodes]
    counts = [0] * len(problem.items)
    flows: dict[str, dict[str, float]] = {}
    unserved: dict[str, float] = {}
    for r, demand in sorted(problem.demand_rps.items(), key=lambda kv: -kv[1]):
        if demand <= 0:
            continue
        routes = problem.routes(r)
        if not routes:
            unserved[r] = demand
            continue
        q = routes[0]  # its own pool, or the first longer pool that can meet its SLO
        left = _fill(problem, q, demand, free, counts, per_gpu=per_gpu)
        flows[r] = {q: demand - left}
        if left > EPS:
            unserved[r] = left
    return counts, flows, unserved


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


@dataclass(frozen=True)
class Baseline:
    """All pools on TP8 at the highest measured clock, each sized for its load (modelled)."""

    groups: tuple[Group, ...]
    unservable: tuple[str, ...]  # pools TP8 at max clock cannot serve within the SLO

    @property
    def power_w(self) -> float:
        return sum(g.power_w for g in self.groups)

    @property
    def gpus(self) -> int:
        return sum(g.gpus for g in self.groups)


def baseline(profile: Profile, demand_rps: Mapping[str, float], slo: SloTargets) -> Baseline:
    groups: list[Group] = []
    bad: list[str] = []
    for pool, rps in sorted(demand_rps.items()):
        if rps <= 0:
            continue
        rtype = RequestType.parse(pool)
        try:
            clock = profile.clocks(8, rtype)[-1]
            cap = profile.max_load(8, clock, rtype, slo)
        except ProfilesError:
            cap, clock = 0.0, 0
        if cap <= 0:
            bad.append(pool)
            continue
        count = math.ceil(rps / cap - EPS)
        each = rps / count
        groups.append(Group(pool, 8, clock, count, each, profile.lookup(8, clock, rtype, each).power_w))
    return Baseline(tuple(groups), tuple(bad))


SINGLE_POOL_TP = 8
IDLE_GPU_W = 70.0  # modelled: an idle H100 with a model loaded (as wattgate.agent.gpu.simulated draws)


@dataclass(frozen=True)
class SinglePool:
    """DynamoLLM's baseline (modelled): one pool of TP8 instances at the highest clock measured for every
    type, as few as carry the whole load mix within each type's targets, plus ``IDLE_GPU_W`` for each
    other GPU of the cluster."""

    instances: int
    clock_mhz: int
    power_w: float  # the instances at their load plus the cluster's other GPUs idle
    meets: frozenset[RequestType]  # types whose P99 at the per-instance load is within their targets

    @property
    def gpus(self) -> int:
        return self.instances * SINGLE_POOL_TP


def single_pool(
    profile: Profile,
    loads: Mapping[RequestType, float],
    slo: SloTargets,
    gpus: int,
    mix: Mapping[RequestType, float] | None = None,
) -> SinglePool:
    """The single-pool baseline for ``loads`` (req/s per type) on a cluster of ``gpus``; with no load, one
    instance kept warm for ``mix`` (type shares). Types the profile did not measure at TP8 are left out."""
    total = sum(v for v in loads.values() if v > 0)
    shares = {t: v / total for t, v in loads.items() if v > 0} if total > 0 else dict(mix or {})
    shares = {t: s for t, s in shares.items() if profile.covers(SINGLE_POOL_TP, t)}
    if not shares:
        return SinglePool(0, 0, gpus * IDLE_GPU_W, frozenset())
    clock = min(profile.clocks(SINGLE_POOL_TP, t)[-1] for t in shares)
    caps = {t: profile.max_load(SINGLE_POOL_TP, clock, t, slo) for t in shares}
    inverse = sum(s / caps[t] for t, s in shares.items() if caps[t] > 0)
    n = max(1, math.ceil(total * inverse - EPS))
    power, meets = 0.0, set()
    for t, s in shares.items():
        load = min(total / n, profile.max_measured_load(SINGLE_POOL_TP, clock, t))
        p = profile.lookup(SINGLE_POOL_TP, clock, t, load)
        power += s * p.power_w
        if slo.met(t, p.ttft_p99_s, p.tbt_p99_s):
            meets.add(t)
    idle = max(0, gpus - n * SINGLE_POOL_TP) * IDLE_GPU_W
    return SinglePool(n, clock, n * power + idle, frozenset(meets))
