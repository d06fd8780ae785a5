"""The MILP's speed-ups keep its answers: the cover warm start, re-plans still optimal, the faster pruning."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pulp
import pytest

from tests.planner.realistic import realistic_profile
from tests.planner.test_solver import _packs
from tests.planner.toy import toy_profile
from wattgate.planner import solver
from wattgate.planner.greedy import PlanCounts, cover_counts, reconfiguration_w
from wattgate.planner.model import (
    Config,
    Inventory,
    Item,
    Node,
    Problem,
    SolverSettings,
    _prune,
    build_items,
    make_problem,
)
from wattgate.planner.solver import MilpSolution, solve_milp

EXACT = SolverSettings(gap_rel=0.0, time_limit_s=30.0)
REPLAN = SolverSettings(gap_rel=0.0, time_limit_s=30.0, period_s=30.0)  # reconfiguration weighs 10x
AZURE_MIX = {"SS": 2.6, "SM": 2.1, "SL": 0.01, "MS": 1.5, "MM": 0.66, "ML": 2.6, "LS": 4.3, "LM": 1.2, "LL": 1.1}


def _objective(
    problem: Problem, counts: Sequence[int], flows: dict[str, dict[str, float]], unserved: dict[str, float]
) -> float:
    s = problem.settings
    power = sum(it.power_w * c for it, c in zip(problem.items, counts, strict=True))
    spill = sum(v for r, by in flows.items() for q, v in by.items() if q != r)
    return power + s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * sum(unserved.values())


def _check_plan(problem: Problem, plan: PlanCounts) -> None:
    """Fits the GPUs (per TP size), each type all on one of its routes, each pool within its ratings (fixed
    instances included, each of them running one item)."""
    counts, flows, unserved, fixed = plan
    assert len(fixed) == len(problem.fixed_items)
    for tp, n in problem.fixed_counts.items():
        assert sum(c for it, c in zip(problem.fixed_items, fixed, strict=True) if it.tp == tp) == n
    for t in {it.tp for it in problem.items}:
        used = sum(it.tp * c for it, c in zip(problem.items, counts, strict=True) if it.tp >= t)
        assert used <= problem.inventory.slots(t)
    load: dict[str, float] = {}
    for r, d in problem.demand_rps.items():
        by = {q: v for q, v in flows.get(r, {}).items() if v > 0}
        assert len(by) <= 1 and set(by) <= set(problem.routes(r))
        assert sum(by.values()) + unserved.get(r, 0.0) == pytest.approx(d)
        for q, v in by.items():
            load[q] = load.get(q, 0.0) + v
    for q, v in load.items():
        chosen = [*zip(problem.items, counts, strict=True), *zip(problem.fixed_items, fixed, strict=True)]
        rated = sum(it.load_rps * c for it, c in chosen if it.pool.name == q)
        assert v <= rated + 1e-6


@pytest.mark.parametrize(
    ("demand", "nodes"),
    [
        ({"SS": 2.5}, (8,)),
        ({"SS": 0.4, "SM": 2.0}, (4, 4)),
        ({"SS": 5.0, "SM": 3.0}, (8,)),
        ({"SS": 6.5, "SM": 1.2}, (6, 6)),
        ({"SS": 3.3, "SM": 1.7}, (8,)),
        ({"SS": 20.0, "SM": 15.0}, (8, 8, 8, 8)),
    ],
)
def test_cover_plan_is_valid_and_near_the_optimum(demand: dict[str, float], nodes: tuple[int, ...]) -> None:
    inv = Inventory(tuple(Node(f"n{i}", g) for i, g in enumerate(nodes)))
    problem = make_problem(toy_profile(), demand, inv, EXACT)
    plan = cover_counts(problem)
    assert plan is not None
    _check_plan(problem, plan)
    sol = solve_milp(problem)
    optimum = _objective(problem, sol.counts, sol.flows, sol.unserved)
    assert optimum - 1e-6 <= _objective(problem, *plan[:3]) <= 1.05 * optimum


def test_cover_prices_gpus_until_the_plan_fits_a_binding_budget() -> None:
    demand = {p: v * 2.5 for p, v in AZURE_MIX.items()}  # ~1 req/s per GPU on 40 GPUs
    full = SolverSettings(headroom=1.0)  # instances rated at their whole SLO capacity: the budget binds
    roomy = make_problem(realistic_profile(), demand, Inventory.uniform(1024), full)
    free_plan = cover_counts(roomy)
    assert free_plan is not None
    budget = 32  # the shipped profile (2026-12-07) serves this demand power-cheapest on 38 GPUs, on 32 at a cost
    assert sum(it.tp * c for it, c in zip(roomy.items, free_plan[0], strict=True)) > budget  # the premise: too big
    tight = make_problem(realistic_profile(), demand, Inventory.uniform(budget), full)
    plan = cover_counts(tight)
    assert plan is not None and not plan[2]
    _check_plan(tight, plan)
    overloaded = make_problem(realistic_profile(), {p: v * 2 for p, v in demand.items()}, Inventory.uniform(40), full)
    assert cover_counts(overloaded) is None  # nothing serving all of it fits: the greedy plan starts the MILP


def test_reconfiguration_w_prices_as_the_milp_does() -> None:
    """Fix the instance counts in the MILP itself and compare its objective with power + reconfiguration_w."""
    inv = Inventory.uniform(24)
    current = {("SS", 4, 2000): 2, ("SS", 2, 1000): 1, ("SM", 8, 2000): 1}
    settings = SolverSettings(gap_rel=0.0, prune=False)
    problem = make_problem(toy_profile(), {"SS": 7.0, "SM": 2.0}, inv, settings, current=current)
    by_config: dict[Config, list[int]] = {}
    for k, it in enumerate(problem.items):
        by_config.setdefault(it.config, []).append(k)
    for new in (
        {("SS", 2, 1000): 4, ("SM", 4, 1000): 1},  # re-shard TP4 -> TP2, TP8 -> TP4
        {("SS", 4, 1000): 2, ("SS", 2, 1000): 1, ("SM", 8, 2000): 1},  # clock changes only
        {("SS", 4, 2000): 2, ("SS", 2, 1000): 2, ("SM", 8, 2000): 1},  # one start
        {("SS", 8, 2000): 1, ("SM", 2, 2000): 2},  # re-shard up and down at once
    ):
        counts = [0] * len(problem.items)
        for c, m in new.items():
            top = max(by_config[c], key=lambda k: problem.items[k].load_rps)
            counts[top] = m
        model = solver._build(problem)
        prob = model.prob
        for var, m in zip(model.n, counts, strict=True):
            var.setInitialValue(m)
            var.fixValue()
        prob.solve(pulp.COIN_CMD(path=solver._cbc_binary(), msg=False))
        assert prob.sol_status == pulp.LpSolutionOptimal
        power = sum(it.power_w * m for it, m in zip(problem.items, counts, strict=True))
        spill_and_unserved = pulp.value(prob.objective) - power - _reconfiguration(problem, new)
        flows_cost = _best_flows_cost(problem.demand_rps, problem, counts)
        assert spill_and_unserved == pytest.approx(flows_cost, abs=1e-2), (
            new
        )  # CBC tolerance x 1e6 W per unserved req/s


def _reconfiguration(problem: Problem, new: dict[Config, int]) -> float:
    pools = {c[0] for c in (*new, *problem.current)}
    return sum(
        reconfiguration_w(
            problem.settings,
            {c: m for c, m in new.items() if c[0] == p},
            {c: m for c, m in problem.current.items() if c[0] == p},
        )
        for p in pools
    )


def _best_flows_cost(demand: Mapping[str, float], problem: Problem, counts: Sequence[int]) -> float:
    """Spill + unserved cost of the cheapest all-or-nothing routing for fixed counts (toy: SS, SM)."""
    cap = {
        q: sum(it.load_rps * c for it, c in zip(problem.items, counts, strict=True) if it.pool.name == q)
        for q in ("SS", "SM")
    }
    s, d_ss, d_sm = problem.settings, demand.get("SS", 0.0), demand.get("SM", 0.0)
    sm_own = min(d_sm, cap["SM"])
    stay = s.unserved_penalty_w_per_rps * (d_ss - min(d_ss, cap["SS"]))
    spill = min(d_ss, cap["SM"] - sm_own)
    go = s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * (d_ss - spill)
    return min(stay, go) + s.unserved_penalty_w_per_rps * (d_sm - sm_own)


def test_reconfiguration_w_by_hand() -> None:
    s = SolverSettings()  # start 24 kJ/GPU, re-shard 12 kJ/GPU, clock change 0.5 kJ, over 300 s
    assert reconfiguration_w(s, {("SS", 2, 1000): 1}, {}) == pytest.approx(2 * 24_000 / 300)
    assert reconfiguration_w(s, {("SS", 4, 1000): 2}, {("SS", 4, 2000): 2}) == pytest.approx(2 * 500 / 300)
    resharded = reconfiguration_w(s, {("SS", 2, 1000): 2}, {("SS", 4, 2000): 3})
    assert resharded == pytest.approx(2 * 2 * 12_000 / 300)
    assert reconfiguration_w(s, {}, {("SS", 4, 2000): 3}) == 0.0


@pytest.mark.parametrize(
    ("demand", "nodes", "current"),
    [
        ({"SS": 5.5, "SM": 3.3}, (8,), {("SS", 4, 2000): 1, ("SM", 2, 1000): 1}),
        ({"SS": 12.0, "SM": 9.0}, (4, 4), {("SS", 2, 2000): 2, ("SM", 2, 2000): 1}),  # partly unserved
        ({"SS": 0.2, "SM": 4.5}, (8,), {("SS", 2, 1000): 1, ("SM", 4, 1000): 1}),
        ({"SS": 20.0}, (4,), {("SS", 2, 2000): 2}),  # all GPUs busy, load beyond them
    ],
)
def test_re_plan_finds_the_brute_force_optimum(
    demand: dict[str, float], nodes: tuple[int, ...], current: dict[Config, int]
) -> None:
    """Power + reconfiguration (priced as ``reconfiguration_w``, checked above against the MILP) + spill
    and unserved costs, minimised over every instance multiset that packs into the nodes."""
    inv = Inventory(tuple(Node(f"n{i}", g) for i, g in enumerate(nodes)))
    problem = make_problem(toy_profile(), demand, inv, REPLAN, current=current)
    sol = solve_milp(problem)
    assert sol.proved_optimal
    found = _replan_cost(problem, sol.counts)
    best = min(_replan_cost(problem, counts) for counts in _packings(problem))
    assert found == pytest.approx(best, rel=1e-6, abs=1e-3)


def _replan_cost(problem: Problem, counts: Sequence[int]) -> float:
    new: dict[Config, int] = {}
    for it, c in zip(problem.items, counts, strict=True):
        if c:
            new[it.config] = new.get(it.config, 0) + c
    power = sum(it.power_w * c for it, c in zip(problem.items, counts, strict=True))
    flows = _best_flows_cost(problem.demand_rps, problem, counts)
    return power + _reconfiguration(problem, new) + flows


def _packings(problem: Problem) -> list[list[int]]:
    items = problem.items
    nodes = [n.gpus for n in problem.inventory.nodes]
    out = []
    for k in range(sum(nodes) // min(it.tp for it in items) + 1):
        for combo in itertools.combinations_with_replacement(range(len(items)), k):
            sizes = sorted((items[i].tp for i in combo), reverse=True)
            if sum(sizes) <= sum(nodes) and _packs(sizes, nodes):
                counts = [0] * len(items)
                for i in combo:
                    counts[i] += 1
                out.append(counts)
    return out


def _pairwise_prune(items: list[Item], keep: set[Config]) -> list[Item]:
    """The definition: drop an item another beats (no more GPUs, at least its load, no more power)."""

    def key(i: Item) -> tuple[int, float, float, int]:
        return (i.tp, -i.load_rps, i.power_w, i.clock_mhz)

    return [
        a
        for a in items
        if a.config in keep
        or not any(
            b is not a and b.tp <= a.tp and b.load_rps >= a.load_rps and b.power_w <= a.power_w and key(b) < key(a)
            for b in items
        )
    ]


def test_pruning_matches_its_pairwise_definition() -> None:
    profiles = [toy_profile(), realistic_profile()]
    for profile in profiles:
        items = build_items(profile, SolverSettings(prune=False))
        for pool in {it.pool for it in items}:
            mine = [it for it in items if it.pool == pool]
            for keep in (set(), {mine[0].config, mine[-1].config}):
                assert _prune(mine, keep) == _pairwise_prune(mine, keep)


def test_milp_solution_of_a_re_plan_is_valid_with_the_cuts() -> None:
    current = {("SS", 2, 1000): 3, ("SM", 4, 2000): 1}
    problem = make_problem(toy_profile(), {"SS": 8.0, "SM": 4.0}, Inventory.uniform(16), EXACT, current=current)
    sol: MilpSolution = solve_milp(problem)
    assert sol.proved_optimal
    _check_plan(problem, (list(sol.counts), sol.flows, sol.unserved, list(sol.fixed_counts)))
