"""Plans that would move what they keep: ``solve_placeable`` asks again for new instances that fit where there
is room now (``collateral_moves``, ``largest_free_block``)."""

from __future__ import annotations

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.epoch import solve_placeable
from wattgate.planner.explain import running_counts
from wattgate.planner.model import Group, Inventory, Problem, SolverSettings, make_problem
from wattgate.planner.placement import collateral_moves, largest_free_block, place
from wattgate.planner.solver import MilpSolution
from wattgate.profiles.table import Profile

A, B = "MS", "SL"  # neither may serve the other's requests


def _profile() -> Profile:
    rows = []
    for pool in (A, B):
        for tp, ttft1, growth, idle_w, per_rps_w in ((4, 0.04, 0.04, 500.0, 50.0), (8, 0.03, 0.01, 1000.0, 5.0)):
            for load in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0):
                rows.append((tp, 2000, pool, load, ttft1 + growth * (load - 1), 0.05, idle_w + per_rps_w * load))
    return Profile("placeable", "toy-gpu", rows)


# a full-ish cluster: A's two TP4 on both nodes, B's TP4 beside one of them; node-1 has 4 GPUs free
RUNNING = [
    PlannedInstance("a1", A, "node-0", [0, 1, 2, 3], 4, 2000, 1.0, 550.0),
    PlannedInstance("b1", B, "node-0", [4, 5, 6, 7], 4, 2000, 1.0, 550.0),
    PlannedInstance("a2", A, "node-1", [0, 1, 2, 3], 4, 2000, 1.0, 550.0),
]


def _prefers_tp8(problem: Problem) -> MilpSolution:
    """A solver that keeps A's two TP4s and gives B one TP8 when the problem offers one, else two TP4s (what
    the MILP does when one TP8 costs less energy than two TP4s: it counts GPUs, not where they are)."""
    counts = [0] * len(problem.items)

    def pick(pool: str, tp: int, n: int) -> bool:
        for k, it in enumerate(problem.items):
            if it.config[0] == pool and it.tp == tp:
                counts[k] = n
                return True
        return False

    pick(A, 4, 2)
    if not pick(B, 8, 1):
        pick(B, 4, 2)
    flows = {p: {p: float(d)} for p, d in problem.demand_rps.items()}
    return MilpSolution(tuple(counts), flows, dict.fromkeys(problem.demand_rps, 0.0), proved_optimal=True)


def test_a_plan_that_moves_kept_instances_is_replaced_by_one_that_fits_where_there_is_room() -> None:
    inv = Inventory.uniform(16)
    problem = make_problem(_profile(), {A: 4.0, B: 5.0}, inv, SolverSettings(), running_counts(RUNNING))
    assert any(it.config[0] == B and it.tp == 8 for it in problem.items)
    # what the first plan would do: B's TP8 needs a whole node, so a kept A instance is restarted elsewhere
    first = place([Group(A, 4, 2000, 2, 2.0, 600.0), Group(B, 8, 2000, 1, 5.0, 1025.0)], inv, RUNNING)
    assert collateral_moves([Group(A, 4, 2000, 2, 2.0, 600.0), Group(B, 8, 2000, 1, 5.0, 1025.0)], first, RUNNING)
    assert largest_free_block(inv, RUNNING) == 4
    decision, placement = solve_placeable(problem, RUNNING, backend=_prefers_tp8)
    assert sorted((g.pool, g.tp, g.count) for g in decision.groups) == [(A, 4, 2), (B, 4, 2)]
    assert collateral_moves(decision.groups, placement, RUNNING) == 0
    kept = {p.id: (p.node, p.gpus) for p in placement.instances}
    assert all(kept[r.id] == (r.node, r.gpus) for r in RUNNING)  # every running instance stays where it is
    assert placement.unplaced == 0


def test_a_plan_with_room_for_its_new_tp_is_left_as_it_is() -> None:
    inv = Inventory.uniform(24)  # a third node, empty: B's TP8 fits without moving anything
    problem = make_problem(_profile(), {A: 4.0, B: 5.0}, inv, SolverSettings(), running_counts(RUNNING))
    decision, placement = solve_placeable(problem, RUNNING, backend=_prefers_tp8)
    assert sorted((g.pool, g.tp, g.count) for g in decision.groups) == [(A, 4, 2), (B, 8, 1)]
    assert collateral_moves(decision.groups, placement, RUNNING) == 0 and placement.unplaced == 0
