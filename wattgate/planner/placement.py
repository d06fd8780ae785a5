"""Placement: map the plan's instances onto nodes and GPU indices, keeping running instances where they are.

Pure. A running instance of the same pool and TP stays on its GPUs (its clock and load may change; one on
warm standby is planned active again, so its agent wakes it);
only the rest are placed, largest TP first, best fit, each TP group on aligned GPUs of one node,
never on GPUs that are ``held`` (an instance still draining or stopping holds its GPUs until it is
gone). When what stays fragments the nodes so much that a new group no longer fits, everything is
placed afresh (more moves, but a plan that fits beats one that does not).

Fixed instances (``assign_fixed``) are not placed: they run where they run. The plan's fixed groups are
handed out to them, each keeping the pool it serves now (and then its clock) where a group of its TP allows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.model import FixedInstance, Group, Inventory


@dataclass(frozen=True)
class Placement:
    instances: tuple[PlannedInstance, ...]
    started: int  # instances that must be started (new GPUs or a new TP): the moves
    kept: int
    unplaced: int  # instances of the plan that found no GPUs (an alert)


@dataclass(frozen=True)
class _Want:
    pool: str
    tp: int
    clock_mhz: int
    load_rps: float
    power_w: float


def place(
    groups: Sequence[Group],
    inventory: Inventory,
    running: Sequence[PlannedInstance],
    held: Sequence[PlannedInstance] = (),
) -> Placement:
    wants = [_Want(g.pool, g.tp, g.clock_mhz, g.load_rps_each, g.power_w_each) for g in groups for _ in range(g.count)]
    sizes = {n.name: n.gpus for n in inventory.nodes}
    kept: list[PlannedInstance] = []
    rest: list[_Want] = []
    pool_running = [r for r in running if r.node in sizes and all(0 <= x < sizes[r.node] for x in r.gpus)]
    for w in sorted(wants, key=lambda w: (w.pool, -w.tp, -w.clock_mhz)):
        match = _best_match(w, pool_running)
        if match is None:
            rest.append(w)
            continue
        pool_running.remove(match)
        kept.append(
            PlannedInstance(match.id, w.pool, match.node, list(match.gpus), w.tp, w.clock_mhz, w.load_rps, w.power_w)
        )
    placed, unplaced = _pack(rest, inventory, [*kept, *held])
    if unplaced:
        fresh, fresh_unplaced = _pack(wants, inventory, held)
        if len(fresh_unplaced) < len(unplaced):
            return Placement(tuple(fresh), len(fresh), 0, len(fresh_unplaced))
    return Placement(tuple(kept + placed), len(placed), len(kept), len(unplaced))


def collateral_moves(groups: Sequence[Group], placement: Placement, running: Sequence[PlannedInstance]) -> int:
    """Running instances the plan keeps in their pool and TP but the placement restarts elsewhere (it placed
    afresh to make room): each leaves its pool short for a start's time, a cost the solver does not see."""
    wanted: Counter[tuple[str, int]] = Counter()
    for g in groups:
        wanted[(g.pool, g.tp)] += g.count
    have = Counter((r.pool, r.tp) for r in running)
    ids = {p.id for p in placement.instances}
    kept = Counter((r.pool, r.tp) for r in running if r.id in ids)
    return sum(max(min(n, wanted[key]) - kept[key], 0) for key, n in have.items())


def largest_free_block(inventory: Inventory, taken: Sequence[PlannedInstance]) -> int:
    """The largest TP (a power of two) that fits on GPUs no instance in ``taken`` holds, 0 if none."""
    free: dict[str, set[int]] = {n.name: set(range(n.gpus)) for n in inventory.nodes}
    for t in taken:
        if t.node in free:
            free[t.node] -= set(t.gpus)
    best, tp = 0, 1
    while tp <= max((n.gpus for n in inventory.nodes), default=0):
        if _spot(free, tp) is not None:
            best = tp
        tp *= 2
    return best


def _best_match(w: _Want, running: list[PlannedInstance]) -> PlannedInstance | None:
    same = [r for r in running if r.pool == w.pool and r.tp == w.tp and len(r.gpus) == r.tp]
    if not same:
        return None
    # one that serves before one on standby (waking costs seconds, but a serving one costs nothing)
    return min(same, key=lambda r: (r.standby, r.sm_clock_mhz != w.clock_mhz, r.node, r.gpus))


def _pack(
    wants: Sequence[_Want], inventory: Inventory, fixed: Sequence[PlannedInstance]
) -> tuple[list[PlannedInstance], list[_Want]]:
    free: dict[str, set[int]] = {n.name: set(range(n.gpus)) for n in inventory.nodes}
    for f in fixed:
        free[f.node] -= set(f.gpus)
    placed: list[PlannedInstance] = []
    unplaced: list[_Want] = []
    for w in sorted(wants, key=lambda w: (-w.tp, w.pool, -w.clock_mhz)):
        spot = _spot(free, w.tp)
        if spot is None:
            unplaced.append(w)
            continue
        node, gpus = spot
        free[node] -= set(gpus)
        iid = f"{w.pool.lower()}-{node}-g{gpus[0]}-tp{w.tp}"
        placed.append(PlannedInstance(iid, w.pool, node, gpus, w.tp, w.clock_mhz, w.load_rps, w.power_w))
    return placed, unplaced


def _spot(free: dict[str, set[int]], tp: int) -> tuple[str, list[int]] | None:
    """Best fit: an aligned block of ``tp`` free GPUs on the node with the fewest free GPUs."""
    best: tuple[int, str, list[int]] | None = None
    for node, idle in free.items():
        if len(idle) < tp:
            continue
        top = max(idle) + 1
        for start in range(0, top, tp):
            block = list(range(start, start + tp))
            if all(g in idle for g in block):
                if best is None or (len(idle), node) < (best[0], best[1]):
                    best = (len(idle), node, block)
                break
    return None if best is None else (best[1], best[2])


def assign_fixed(groups: Sequence[Group], fixed: Sequence[FixedInstance]) -> tuple[PlannedInstance, ...]:
    """The fixed instances with the pool, clock and load of ``groups`` (the decision's fixed groups, whose
    counts per TP are at most the instances of that TP); an instance no group covers is left out."""
    slots: dict[int, list[_Want]] = {}
    for g in sorted(groups, key=lambda g: (g.pool, -g.clock_mhz, -g.load_rps_each)):
        slots.setdefault(g.tp, []).extend(
            _Want(g.pool, g.tp, g.clock_mhz, g.load_rps_each, g.power_w_each) for _ in range(g.count)
        )
    out: list[PlannedInstance] = []
    for tp, wants in sorted(slots.items()):
        free = sorted((f for f in fixed if f.tp == tp), key=lambda f: f.id)
        # same pool and clock first, then same pool, then anything: routing and clocks move only when they must
        for same in (
            lambda w, f: (f.pool, f.clock_mhz) == (w.pool, w.clock_mhz),
            lambda w, f: f.pool == w.pool,
            lambda w, f: True,
        ):
            for w in list(wants):
                match = next((f for f in free if same(w, f)), None)
                if match is None:
                    continue
                wants.remove(w)
                free.remove(match)
                out.append(
                    PlannedInstance(
                        match.id, w.pool, match.node, list(match.gpus), tp, w.clock_mhz, w.load_rps, w.power_w
                    )
                )
    return tuple(sorted(out, key=lambda p: p.id))
