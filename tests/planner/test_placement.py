from __future__ import annotations

import random

import pytest

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.model import Group, Inventory, Node
from wattgate.planner.placement import place


def _check(instances: tuple[PlannedInstance, ...], inv: Inventory) -> None:
    sizes = {n.name: n.gpus for n in inv.nodes}
    seen: set[tuple[str, int]] = set()
    for i in instances:
        assert len(i.gpus) == i.tp
        assert all(0 <= g < sizes[i.node] for g in i.gpus)  # one node, real GPU indices
        for g in i.gpus:
            assert (i.node, g) not in seen
            seen.add((i.node, g))
    assert len({i.id for i in instances}) == len(instances)


@pytest.mark.parametrize(
    ("groups", "nodes"),
    [
        ([Group("SS", 2, 1000, 2, 1.0, 500.0), Group("MM", 4, 1200, 1, 1.0, 900.0)], (8,)),
        ([Group("LL", 8, 1980, 2, 1.0, 2500.0), Group("SS", 2, 1000, 4, 1.0, 500.0)], (8, 8, 8)),
        ([Group("SM", 4, 1000, 3, 1.0, 900.0), Group("SS", 2, 1000, 2, 1.0, 500.0)], (6, 6, 4)),
    ],
)
def test_places_every_instance_on_one_node_each(groups: list[Group], nodes: tuple[int, ...]) -> None:
    inv = Inventory(tuple(Node(f"n{k}", g) for k, g in enumerate(nodes)))
    p = place(groups, inv, [])
    assert p.unplaced == 0 and p.kept == 0
    assert len(p.instances) == sum(g.count for g in groups)
    _check(p.instances, inv)


def test_running_instances_stay_where_they_are() -> None:
    inv = Inventory.uniform(16)
    first = place([Group("SS", 2, 1000, 2, 1.0, 500.0), Group("MM", 4, 1200, 1, 2.0, 900.0)], inv, [])
    again = place(
        [Group("SS", 2, 1400, 3, 1.2, 600.0), Group("MM", 4, 1200, 1, 2.0, 900.0)], inv, list(first.instances)
    )
    assert again.kept == 3 and again.started == 1
    before = {i.id: (i.node, i.gpus) for i in first.instances}
    for i in again.instances:
        if i.id in before:
            assert (i.node, i.gpus) == before[i.id]
            assert i.sm_clock_mhz in (1400, 1200)  # clocks follow the new plan without a move
    _check(again.instances, inv)


def test_random_plans_that_fit_the_budget_constraints_always_pack() -> None:
    rng = random.Random(7)
    for _ in range(200):
        inv = Inventory(tuple(Node(f"n{k}", rng.choice((4, 8, 8, 6))) for k in range(rng.randint(1, 4))))
        groups: list[Group] = []
        for tp in (8, 4, 2):
            count = rng.randint(0, 3)
            trial = [*groups, Group("SS", tp, 1000, count, 1.0, 1.0)] if count else groups
            # the solver's packing constraints: GPUs of groups >= t fit the t-aligned slots
            if all(sum(g.gpus for g in trial if g.tp >= t) <= inv.slots(t) for t in (2, 4, 8)):
                groups = trial
        p = place(groups, inv, [])
        assert p.unplaced == 0, (groups, inv)
        _check(p.instances, inv)
