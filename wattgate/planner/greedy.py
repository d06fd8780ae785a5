"""Plans without a MILP: turning item counts into a ``Decision``, the greedy fallback, and the baseline.

The greedy fallback always returns a plan that fits the GPUs (possibly serving only part of the
load, with an alert); the solver publishes it when CBC fails. The baseline is what wattgate is
compared with: every pool on TP8 instances at the highest measured clock, sized for its load.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wattgate.planner.model import Decision, Group, Problem, SolveStatus
from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile

EPS = 1e-6


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
    """Cheapest power per req/s first, largest pools first, best-fit on nodes; never fails."""
    started = time.perf_counter()
    counts, flows, unserved = greedy_counts(problem)
    return realize(problem, counts, flows, unserved, SolveStatus.FALLBACK, time.perf_counter() - started)


def greedy_counts(problem: Problem) -> tuple[list[int], dict[str, dict[str, float]], dict[str, float]]:
    """The greedy plan as item counts, flows and unserved load (also the MILP's warm start).

    Tries two orders, cheapest power per req/s and most req/s per GPU (for a tight budget), and
    keeps the one that serves more, then draws less.
    """
    best: tuple[float, float, tuple[list[int], dict[str, dict[str, float]], dict[str, float]]] | None = None
    for per_gpu in (False, True):
        counts, flows, unserved = _greedy(problem, per_gpu)
        power = sum(it.power_w * c for it, c in zip(problem.items, counts, strict=True))
        score = (sum(unserved.values()), power)
        if best is None or score < best[:2]:
            best = (*score, (counts, flows, unserved))
    assert best is not None
    return best[2]


def keep_current(problem: Problem) -> tuple[list[int], dict[str, dict[str, float]], dict[str, float]] | None:
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
        for q in problem.routes(r):
            take = min(left, room.get(q, 0.0))
            if take > 0:
                flows.setdefault(r, {})[q] = take
                room[q] -= take
                left -= take
        if left > EPS:
            return None
    return counts, flows, {}


def _greedy(problem: Problem, per_gpu: bool) -> tuple[list[int], dict[str, dict[str, float]], dict[str, float]]:
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
        fits = [(k, it) for k, it in cands if _slot(free, it.tp) is not None]
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
