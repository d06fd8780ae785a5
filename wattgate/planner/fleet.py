"""Fixed instances in the plans without a MILP: which pool and item each one takes, before managed ones start.

Pure. A fixed instance runs whatever the plan says (its power counts either way), so the greedy plans load
the fixed fleet first and start managed instances only for what it cannot carry. The rule: the pool with
the most load left takes a fixed instance of the TP whose item carries that load with the least power (or,
when none carries all of it, the item carrying the most), until no load is left or no fixed instance can
serve what is; the rest are spares, each at its least-power item of the pool it serves now (or of the pool
with the most load its TP can serve), so they still add capacity where it is most likely to be needed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from wattgate.planner.model import Item, Problem

EPS = 1e-6


@dataclass(frozen=True)
class FixedFill:
    counts: tuple[int, ...]  # per problem.fixed_items
    credit_rps: dict[str, float]  # pool -> req/s the fixed instances are rated for there

    def power_w(self, problem: Problem) -> float:
        return sum(it.power_w * c for it, c in zip(problem.fixed_items, self.counts, strict=True))


class _Options:
    """The fixed items of one (TP, pool) by rated load, with the least-power item carrying at least each load."""

    def __init__(self, items: list[Item]) -> None:
        self.items = sorted(items, key=lambda it: (it.load_rps, it.power_w))
        self.loads = [it.load_rps for it in self.items]
        self.finisher: list[Item] = []  # finisher[i]: least power among items[i:]
        for it in reversed(self.items):
            best = self.finisher[-1] if self.finisher else it
            self.finisher.append(it if it.power_w <= best.power_w else best)
        self.finisher.reverse()
        self.cheapest = min(self.items, key=lambda it: (it.power_w, -it.load_rps))

    def for_load(self, load: float) -> tuple[bool, Item]:
        """(carries it all, item): the least-power item carrying ``load``, else the one carrying the most."""
        i = bisect.bisect_left(self.loads, load - EPS)
        if i < len(self.items):
            return True, self.finisher[i]
        return False, max(self.items, key=lambda it: (it.load_rps, -it.power_w))


def _options(problem: Problem) -> dict[tuple[int, str], _Options]:
    by: dict[tuple[int, str], list[Item]] = {}
    for it in problem.fixed_items:
        by.setdefault((it.tp, it.pool.name), []).append(it)
    return {k: _Options(v) for k, v in by.items()}


def fixed_first(problem: Problem, loads: Mapping[str, float], *, keep: bool = False) -> FixedFill:
    """Assign every fixed instance of ``problem`` (of a TP with items) for pool loads ``loads`` (req/s).

    ``keep``: an instance that runs a config now keeps it (its top rating), as when the running plan stays."""
    if not problem.fixed_items:
        return FixedFill((), {})
    index = {id(it): k for k, it in enumerate(problem.fixed_items)}
    options = _options(problem)
    counts = [0] * len(problem.fixed_items)
    credit: dict[str, float] = {}
    # instances not assigned yet, by TP and the pool they serve now ("" none)
    free: dict[int, Counter[str]] = {}
    for f in problem.fixed:
        if f.tp in problem.fixed_counts:
            free.setdefault(f.tp, Counter())[f.pool or ""] += 1

    def take(tp: int, it: Item, now: str) -> None:
        counts[index[id(it)]] += 1
        credit[it.pool.name] = credit.get(it.pool.name, 0.0) + it.load_rps
        left = free[tp]
        pick = (
            it.pool.name
            if left[it.pool.name]
            else now
            if left[now]
            else ("" if left[""] else left.most_common(1)[0][0])
        )
        left[pick] -= 1
        if not left[pick]:
            del left[pick]

    if keep:
        for (pool, tp, clock), m in problem.fixed_current.items():
            mine = [it for it in problem.fixed_items if it.config == (pool, tp, clock)]
            for _ in range(m if mine else 0):
                take(tp, max(mine, key=lambda it: it.load_rps), pool)
    left = {q: v - credit.get(q, 0.0) for q, v in loads.items()}
    while any(free.values()):
        tps = [tp for tp, c in free.items() if c]
        wanted = [(v, q) for q, v in left.items() if v > EPS and any((tp, q) in options for tp in tps)]
        if not wanted:
            break
        _, q = max(wanted)
        picks = [(*options[(tp, q)].for_load(left[q]), tp) for tp in tps if (tp, q) in options]
        done = [(it, tp) for whole, it, tp in picks if whole]
        if done:
            it, tp = min(done, key=lambda c: (c[0].power_w, c[1]))
        else:
            it, tp = min(((it, tp) for _, it, tp in picks), key=lambda c: (-c[0].load_rps, c[0].power_w, c[1]))
        take(tp, it, q)
        left[q] -= it.load_rps
    for tp, now in list(free.items()):  # spares: no load left that they can serve
        pools = sorted({q for t, q in options if t == tp}, key=lambda q: (-loads.get(q, 0.0), q))
        for pool, m in list(now.items()):
            target = pool if (tp, pool) in options else pools[0]
            for _ in range(m):
                take(tp, options[(tp, target)].cheapest, pool)
    return FixedFill(tuple(counts), credit)
