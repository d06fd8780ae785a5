"""Fixed instances (servers the planner cannot start or stop): counted as capacity, each given one pool and
clock, managed pools sized around them, by the MILP and by the greedy fallback."""

from __future__ import annotations

import itertools
import math

import pytest

from tests.planner.test_solver import _packs
from tests.planner.toy import toy_profile
from wattgate.planner.epoch import plan_epoch
from wattgate.planner.greedy import greedy_solve
from wattgate.planner.model import (
    Decision,
    FixedInstance,
    Group,
    Inventory,
    Node,
    PlannerError,
    Problem,
    SolverSettings,
    make_problem,
)
from wattgate.planner.placement import assign_fixed
from wattgate.planner.solver import MilpSolution, SolverFailed, solve, solve_milp
from wattgate.profiles.classes import RequestType

EXACT = SolverSettings(gap_rel=0.0, time_limit_s=30.0)


def fleet(n: int, tp: int = 2, pool: str | None = None) -> list[FixedInstance]:
    return [FixedInstance(f"e{i}", f"ext{i}", tuple(range(tp)), tp, pool) for i in range(n)]


def _served(d: Decision) -> dict[str, float]:
    out: dict[str, float] = {}
    for by in d.flows_rps.values():
        for q, v in by.items():
            out[q] = out.get(q, 0.0) + v
    return out


def _check(problem: Problem, d: Decision) -> None:
    """Every fixed instance of a TP with items runs exactly one config; each pool's load within the rated
    load of its managed and fixed instances; the managed ones fit the GPUs."""
    assert {tp: sum(g.count for g in d.fixed_groups if g.tp == tp) for tp in problem.fixed_counts} == dict(
        problem.fixed_counts
    )
    assert d.gpus_used <= problem.inventory.total_gpus
    for q, load in _served(d).items():
        each = [g for g in (*d.groups, *d.fixed_groups) if g.pool == q]
        assert load == pytest.approx(sum(g.load_rps_each * g.count for g in each), rel=1e-6)
        for g in each:
            cap = problem.profile.max_load(g.tp, g.clock_mhz, RequestType.parse(q), problem.settings.slo)
            assert g.load_rps_each <= cap * problem.settings.headroom + 1e-6


def test_fixed_capacity_is_counted_before_managed_instances_are_started() -> None:
    """The known problem "external capacity is not counted": managed pools were sized as if the external
    servers were not there."""
    demand = {"SS": 10.0, "SM": 6.0}  # two fixed TP2 instances carry at most 9.6 req/s of it (6 each, 0.8 headroom)
    inv = Inventory.uniform(16)
    alone = solve(make_problem(toy_profile(), demand, inv, EXACT))
    problem = make_problem(toy_profile(), demand, inv, EXACT, fixed=fleet(2))
    with_fleet = solve(problem)
    _check(problem, with_fleet)
    assert with_fleet.unserved_rps == {}
    assert 0 < with_fleet.gpus_used < alone.gpus_used  # fewer managed GPUs: the fleet carries part of the load
    fixed_load = sum(g.load_rps_each * g.count for g in with_fleet.fixed_groups)
    assert fixed_load > 0
    # a fleet that carries everything at its lowest clock (2.8 req/s each at 1000 MHz): nothing managed starts
    everything = make_problem(toy_profile(), demand, inv, EXACT, fixed=fleet(8))
    d = solve(everything)
    _check(everything, d)
    assert d.groups == () and d.unserved_rps == {}


def test_fixed_instances_always_run_one_config_each_even_with_no_load_for_them() -> None:
    problem = make_problem(toy_profile(), {"SS": 0.5}, Inventory.uniform(8), EXACT, fixed=fleet(3))
    d = solve(problem)
    _check(problem, d)
    assert sum(g.count for g in d.fixed_groups) == 3 and d.groups == ()
    # their modelled power counts in the plan's: they draw it whatever the plan says
    assert d.power_w == pytest.approx(sum(g.power_w for g in d.fixed_groups))


def test_only_fixed_instances_and_no_gpus_serve_what_they_can_and_say_what_is_left() -> None:
    problem = make_problem(toy_profile(), {"SS": 30.0, "SM": 10.0}, Inventory(()), EXACT, fixed=fleet(2))
    d = solve(problem)
    _check(problem, d)
    served = sum(_served(d).values())
    assert 0 < served < 40.0 and sum(d.unserved_rps.values()) == pytest.approx(40.0 - served)
    assert any("best partial plan" in a for a in d.alerts)


def _brute_force(problem: Problem) -> float:
    """The least objective over every choice of one fixed item per fixed instance and every managed set that
    packs into the nodes (SS all on SS or all spilled to SM, SM on SM)."""
    s, nodes = problem.settings, [n.gpus for n in problem.inventory.nodes]
    items, fixed_items = problem.items, problem.fixed_items
    ((tp, count),) = problem.fixed_counts.items()
    fixed_options = [k for k, it in enumerate(fixed_items) if it.tp == tp]
    best = math.inf
    for fcombo in itertools.combinations_with_replacement(fixed_options, count):
        for k in range(problem.inventory.total_gpus // min(it.tp for it in items) + 1):
            for combo in itertools.combinations_with_replacement(range(len(items)), k):
                sizes = sorted((items[i].tp for i in combo), reverse=True)
                if sum(sizes) > sum(nodes) or not _packs(sizes, nodes):
                    continue
                chosen = [items[i] for i in combo] + [fixed_items[i] for i in fcombo]
                cap = {p: sum(it.load_rps for it in chosen if it.pool.name == p) for p in ("SS", "SM")}
                power = sum(it.power_w for it in chosen)
                d_ss, d_sm = problem.demand_rps.get("SS", 0.0), problem.demand_rps.get("SM", 0.0)
                sm_own = min(d_sm, cap["SM"])
                spill = min(d_ss, cap["SM"] - sm_own)
                stay = s.unserved_penalty_w_per_rps * (d_ss - min(d_ss, cap["SS"]))
                ss = min(stay, s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * (d_ss - spill))
                best = min(best, power + ss + s.unserved_penalty_w_per_rps * (d_sm - sm_own))
    return best


def _objective(problem: Problem, sol: MilpSolution) -> float:
    s = problem.settings
    power = sum(it.power_w * c for it, c in zip(problem.items, sol.counts, strict=True))
    power += sum(it.power_w * c for it, c in zip(problem.fixed_items, sol.fixed_counts, strict=True))
    spill = sum(v for r, by in sol.flows.items() for q, v in by.items() if q != r)
    return power + s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * sum(sol.unserved.values())


@pytest.mark.parametrize(
    ("demand", "nodes", "fixed"),
    [
        ({"SS": 2.5, "SM": 1.0}, (4,), 2),
        ({"SS": 6.0, "SM": 5.0}, (4,), 2),  # the fleet alone is not enough
        ({"SS": 0.5, "SM": 9.0}, (2, 2), 1),
        ({"SS": 14.0, "SM": 9.0}, (4,), 2),  # more than everything can carry: partial
    ],
)
def test_milp_with_fixed_instances_finds_the_brute_force_optimum(
    demand: dict[str, float], nodes: tuple[int, ...], fixed: int
) -> None:
    inv = Inventory(tuple(Node(f"n{i}", g) for i, g in enumerate(nodes)))
    problem = make_problem(toy_profile(), demand, inv, EXACT, fixed=fleet(fixed))
    sol = solve_milp(problem)
    assert sol.proved_optimal
    assert _objective(problem, sol) == pytest.approx(_brute_force(problem), rel=1e-6, abs=1e-3)


def test_greedy_fallback_counts_the_fixed_fleet_too() -> None:
    demand = {"SS": 5.0, "SM": 3.0}
    inv = Inventory.uniform(16)
    problem = make_problem(toy_profile(), demand, inv, EXACT, fixed=fleet(2))

    def broken(_: Problem) -> MilpSolution:
        raise SolverFailed("no incumbent within the time limit")

    d = solve(problem, backend=broken)
    _check(problem, d)
    assert d.unserved_rps == {} and d.fixed_groups
    alone = greedy_solve(make_problem(toy_profile(), demand, inv, EXACT))
    assert d.gpus_used < alone.gpus_used
    assert d.power_w >= solve(problem).power_w - 1e-6  # never better than the optimum
    # the budget binds (no managed GPUs): the greedy order loads the fixed fleet and says what is left
    tight = make_problem(toy_profile(), {"SS": 30.0, "SM": 10.0}, Inventory(()), EXACT, fixed=fleet(2))
    g = greedy_solve(tight)
    _check(tight, g)
    assert 0 < sum(_served(g).values()) < 40.0


def test_a_fixed_instance_of_a_tp_the_profile_lacks_is_left_out_and_said() -> None:
    odd = FixedInstance("odd", "ext9", (0,), 1)  # the toy profile has no TP1
    epoch = plan_epoch(toy_profile(), {"SS": 1.0}, Inventory.uniform(8), EXACT, fixed=[*fleet(1), odd])
    assert epoch.left_out == ("odd",)
    assert [p.id for p in epoch.fixed] == ["e0"]


def test_bad_fixed_instances_are_clear_errors() -> None:
    with pytest.raises(PlannerError, match="TP2 needs 2 distinct GPUs"):
        FixedInstance("e0", "n", (0,), 2)
    with pytest.raises(PlannerError, match="unique"):
        make_problem(toy_profile(), {"SS": 1.0}, Inventory.uniform(8), fixed=[*fleet(1), *fleet(1)])


def test_plan_epoch_gives_each_fixed_instance_its_pool_and_keeps_it_when_nothing_changes() -> None:
    demand = {"SS": 2.0, "SM": 1.5}
    fixed = fleet(3)
    first = plan_epoch(toy_profile(), demand, Inventory.uniform(8), EXACT, fixed=fixed)
    assert {p.id for p in first.fixed} == {"e0", "e1", "e2"}
    assert {p.pool for p in first.fixed} == {"SS", "SM"}
    assert all(p.node == f.node and p.gpus == list(f.gpus) for p, f in zip(first.fixed, fixed, strict=True))
    again = plan_epoch(toy_profile(), demand, Inventory.uniform(8), EXACT, running=first.instances, fixed=fixed)
    assert again.fixed == first.fixed  # same pools, clocks and loads: nothing is re-routed
    # the load moves to SM: a pool change is a routing change only (no start cost), so the fleet follows it
    # at once rather than a managed instance being started for SM
    moved = plan_epoch(
        toy_profile(), {"SS": 0.1, "SM": 3.4}, Inventory.uniform(8), EXACT, running=first.instances, fixed=fixed
    )
    assert moved.decision.groups == () and moved.placement.started == 0
    assert sum(p.pool == "SM" for p in moved.fixed) > sum(p.pool == "SM" for p in first.fixed)


def test_assign_fixed_keeps_pools_then_clocks() -> None:
    fixed = [
        FixedInstance("a", "n1", (0, 1), 2, "SM", 1000),
        FixedInstance("b", "n1", (2, 3), 2, "SS", 2000),
        FixedInstance("c", "n2", (0, 1), 2, "SS", 1000),
    ]
    groups = [Group("SS", 2, 1000, 2, 1.0, 500.0), Group("SM", 2, 2000, 1, 2.0, 800.0)]
    out = {p.id: (p.pool, p.sm_clock_mhz) for p in assign_fixed(groups, fixed)}
    assert out == {"a": ("SM", 2000), "b": ("SS", 1000), "c": ("SS", 1000)}
