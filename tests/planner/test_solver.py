from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from tests.planner.toy import toy_profile
from wattgate.planner.explain import serves
from wattgate.planner.model import (
    Group,
    Inventory,
    Node,
    PlannerError,
    Problem,
    SolverSettings,
    SolveStatus,
    build_items,
    make_problem,
)
from wattgate.planner.solver import MilpSolution, SolverFailed, solve, solve_milp
from wattgate.profiles.classes import LengthClass, RequestType, SloTargets
from wattgate.profiles.table import Profile

EXACT = SolverSettings(gap_rel=0.0, time_limit_s=30.0)


def _packs(sizes: Sequence[int], nodes: Sequence[int]) -> bool:
    """Exact bin packing by search: do TP groups of these sizes fit in these nodes?"""
    free = list(nodes)

    def go(i: int) -> bool:
        if i == len(sizes):
            return True
        tried = set()
        for j, f in enumerate(free):
            if f >= sizes[i] and f not in tried:
                tried.add(f)
                free[j] -= sizes[i]
                if go(i + 1):
                    return True
                free[j] += sizes[i]
        return False

    return go(0)


def _cost(problem: Problem, counts: Sequence[int]) -> float:
    """Optimal objective for fixed instance counts: SS all in its own pool or all spilled to SM, rest unserved."""
    s = problem.settings
    cap = {p: 0.0 for p in problem.pools}
    power = 0.0
    for it, c in zip(problem.items, counts, strict=True):
        cap[it.pool.name] += it.load_rps * c
        power += it.power_w * c
    d_ss, d_sm = problem.demand_rps.get("SS", 0.0), problem.demand_rps.get("SM", 0.0)
    sm_own = min(d_sm, cap.get("SM", 0.0))
    spill = min(d_ss, cap.get("SM", 0.0) - sm_own)
    stay = s.unserved_penalty_w_per_rps * (d_ss - min(d_ss, cap.get("SS", 0.0)))
    ss_cost = min(stay, s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * (d_ss - spill))
    return power + ss_cost + s.unserved_penalty_w_per_rps * (d_sm - sm_own)


def _brute_force(problem: Problem) -> float:
    nodes = [n.gpus for n in problem.inventory.nodes]
    items = problem.items
    best = float("inf")
    max_n = problem.inventory.total_gpus // min(it.tp for it in items)
    for k in range(max_n + 1):
        for combo in itertools.combinations_with_replacement(range(len(items)), k):
            sizes = sorted((items[i].tp for i in combo), reverse=True)
            if sum(sizes) > sum(nodes) or not _packs(sizes, nodes):
                continue
            counts = [0] * len(items)
            for i in combo:
                counts[i] += 1
            best = min(best, _cost(problem, counts))
    return best


def _objective(problem: Problem, sol: MilpSolution) -> float:
    s = problem.settings
    power = sum(it.power_w * c for it, c in zip(problem.items, sol.counts, strict=True))
    spill = sum(v for r, by in sol.flows.items() for q, v in by.items() if q != r)
    return power + s.spill_cost_w_per_rps * spill + s.unserved_penalty_w_per_rps * sum(sol.unserved.values())


@pytest.mark.parametrize(
    ("demand", "nodes", "prune"),
    [
        ({"SS": 2.5}, (8,), False),
        ({"SS": 0.4, "SM": 2.0}, (4, 4), False),
        ({"SS": 5.0, "SM": 3.0}, (8,), False),
        ({"SS": 9.0, "SM": 7.0}, (8, 4), True),  # more than the GPUs can serve: partial
        ({"SS": 6.5, "SM": 1.2}, (6, 6), True),  # nodes that do not divide evenly
    ],
)
def test_milp_finds_the_brute_force_optimum(demand: dict[str, float], nodes: tuple[int, ...], prune: bool) -> None:
    settings = SolverSettings(gap_rel=0.0, time_limit_s=30.0, prune=prune)
    inv = Inventory(tuple(Node(f"n{i}", g) for i, g in enumerate(nodes)))
    problem = make_problem(toy_profile(), demand, inv, settings)
    sol = solve_milp(problem)
    assert sol.proved_optimal
    assert _objective(problem, sol) == pytest.approx(_brute_force(problem), rel=1e-6, abs=1e-3)


def test_pruning_keeps_the_optimum() -> None:
    inv = Inventory.uniform(8)
    unpruned = SolverSettings(gap_rel=0.0, time_limit_s=30.0, prune=False)
    full = make_problem(toy_profile(), {"SS": 3.3, "SM": 1.7}, inv, unpruned)
    pruned = make_problem(toy_profile(), {"SS": 3.3, "SM": 1.7}, inv, EXACT)
    assert len(pruned.items) < len(full.items)
    assert _objective(pruned, solve_milp(pruned)) == pytest.approx(_objective(full, solve_milp(full)), rel=1e-6)


def test_items_respect_the_slo_capacity() -> None:
    profile = toy_profile()
    slo = SloTargets()
    for it in build_items(profile, SolverSettings(prune=False)):
        assert it.load_rps <= profile.max_load(it.tp, it.clock_mhz, it.pool, slo) + 1e-9
        assert it.power_w >= profile.lookup(it.tp, it.clock_mhz, it.pool, it.load_rps).power_w - 1e-9


def test_a_small_pool_spills_to_the_next_longer_pool() -> None:
    problem = make_problem(toy_profile(), {"SS": 0.3, "SM": 2.0}, Inventory.uniform(8), EXACT)
    d = solve(problem)
    assert d.flows_rps["SS"] == {"SM": pytest.approx(0.3)}
    assert {g.pool for g in d.groups} == {"SM"}
    assert d.status is SolveStatus.OPTIMAL and d.alerts == ()  # a spill is a normal plan, not an alert


def test_infeasible_budget_gives_the_best_partial_plan_and_an_alert() -> None:
    problem = make_problem(toy_profile(), {"SS": 20.0, "SM": 5.0}, Inventory.uniform(4), EXACT)
    d = solve(problem)
    assert d.status is SolveStatus.OPTIMAL
    assert d.gpus_used <= 4 and d.groups
    served = sum(v for by in d.flows_rps.values() for v in by.values())
    most = 12.0 * EXACT.headroom  # two TP2 at 2000 MHz, 6 req/s each at the SLO limit, less the headroom
    assert served == pytest.approx(most)  # the most 4 GPUs carry
    assert sum(d.unserved_rps.values()) == pytest.approx(25.0 - most)
    assert any("best partial plan" in a for a in d.alerts)


def test_no_gpus_is_an_empty_plan_with_an_alert_not_a_crash() -> None:
    d = solve(make_problem(toy_profile(), {"SS": 1.0}, Inventory(()), EXACT))
    assert d.groups == () and d.unserved_rps == {"SS": 1.0}
    assert d.alerts


def test_solver_failure_falls_back_to_greedy() -> None:
    problem = make_problem(toy_profile(), {"SS": 5.0, "SM": 3.0}, Inventory.uniform(16), EXACT)

    def broken(_: Problem) -> MilpSolution:
        raise SolverFailed("no incumbent within the time limit")

    d = solve(problem, backend=broken)
    assert d.status is SolveStatus.FALLBACK
    assert any("greedy fallback" in a for a in d.alerts)
    _check_covers(problem, d.groups, d.unserved_rps)
    optimum = solve(problem)
    assert d.power_w >= optimum.power_w - 1e-6


def test_time_limit_without_proof_is_published_as_feasible() -> None:
    problem = make_problem(toy_profile(), {"SS": 5.0}, Inventory.uniform(8), EXACT)

    def stopped(p: Problem) -> MilpSolution:
        sol = solve_milp(p)
        return MilpSolution(sol.counts, sol.flows, sol.unserved, proved_optimal=False)

    d = solve(problem, backend=stopped)
    assert d.status is SolveStatus.FEASIBLE
    assert any("time limit" in a or "limit" in a for a in d.alerts)


def test_real_cbc_with_a_tiny_time_limit_still_returns_a_valid_plan() -> None:
    settings = SolverSettings(time_limit_s=0.01, gap_rel=0.0)
    problem = make_problem(toy_profile(), {"SS": 20.0, "SM": 15.0}, Inventory.uniform(32), settings)
    d = solve(problem)
    # whichever way CBC ends on a busy machine (proved, stopped at the limit, no incumbent), the plan says so
    said = {SolveStatus.OPTIMAL: "", SolveStatus.FEASIBLE: "limit", SolveStatus.FALLBACK: "greedy fallback"}
    if said[d.status]:
        assert any(said[d.status] in a for a in d.alerts), (d.status, d.alerts)
    else:
        assert d.alerts == ()
    _check_covers(problem, d.groups, d.unserved_rps)
    assert sum(d.unserved_rps.values()) == 0  # 32 GPUs carry 35 req/s of the toy profile with room to spare


def test_bad_demand_is_a_clear_error() -> None:
    with pytest.raises(PlannerError, match="unknown request type"):
        make_problem(toy_profile(), {"XX": 1.0}, Inventory.uniform(8))
    with pytest.raises(PlannerError, match=">= 0"):
        make_problem(toy_profile(), {"SS": -1.0}, Inventory.uniform(8))
    with pytest.raises(PlannerError, match="no measurements for pool"):
        make_problem(toy_profile(), {"LL": 1.0}, Inventory.uniform(8))


def test_reconfiguration_cost_keeps_a_plan_that_still_fits() -> None:
    inv = Inventory.uniform(16)
    first = solve(make_problem(toy_profile(), {"SS": 5.0, "SM": 3.0}, inv, EXACT))
    for factor in (0.97, 0.99, 1.0):
        again = solve(
            make_problem(toy_profile(), {"SS": 5.0 * factor, "SM": 3.0 * factor}, inv, EXACT, current=first.counts())
        )
        assert again.counts() == first.counts(), factor


def test_a_large_saving_is_worth_a_reconfiguration() -> None:
    inv = Inventory.uniform(16)
    wasteful = {("SS", 4, 2000): 3}  # running now: 3 x TP4 at the high clock
    cheap = SolverSettings(period_s=1800.0, time_limit_s=30.0)  # a wall-clock limit must not decide it under load
    d = solve(make_problem(toy_profile(), {"SS": 5.0}, inv, cheap, current=wasteful))
    assert ("SS", 4, 2000) not in d.counts()
    costly = SolverSettings(
        gap_rel=0.0, period_s=300.0, start_cost_j_per_gpu=10e6, reshard_cost_j_per_gpu=10e6, clock_change_cost_j=10e6
    )
    kept = solve(make_problem(toy_profile(), {"SS": 5.0}, inv, costly, current=wasteful))
    assert set(kept.counts()) == {("SS", 4, 2000)}  # no start, no clock change; idle instances go


def _check_covers(problem: Problem, groups: Sequence[Group], unserved: dict[str, float]) -> None:
    slo = problem.settings.slo
    used = 0
    served = 0.0
    for g in groups:
        used += g.gpus
        served += g.load_rps_each * g.count
        cap = problem.profile.max_load(g.tp, g.clock_mhz, RequestType.parse(g.pool), slo)
        assert g.load_rps_each <= cap + 1e-6
    assert used <= problem.inventory.total_gpus
    assert served + sum(unserved.values()) == pytest.approx(sum(problem.demand_rps.values()), rel=1e-6)


def test_spill_never_puts_a_short_input_type_on_a_rating_that_misses_its_ttft() -> None:
    """Regression: the cheapest plan spilled SS into MS (longer inputs, laxer TTFT) on TP2 @ 1000 MHz at
    5.8 req/s, a rating that holds MS's 0.5 s but not SS's 0.25 s. SS's load goes to one pool, all of
    it, and never to a rating that misses SS's TTFT target."""
    profile = toy_profile(pools=("SS", "MS"))
    problem = make_problem(profile, {"SS": 0.3, "MS": 5.5}, Inventory.uniform(8), EXACT)
    d = solve(problem)
    slo = SloTargets()
    strict = SloTargets({**slo.ttft_p99_s, LengthClass.M: slo.ttft_p99_s[LengthClass.S]}, slo.tbt_p99_s)
    ss_routes = {q for q, v in d.flows_rps["SS"].items() if v > 0}
    assert len(ss_routes) == 1
    assert sum(d.flows_rps["SS"].values()) == pytest.approx(0.3)
    for g in d.groups:
        if g.pool in ss_routes and g.pool != "SS":
            assert g.load_rps_each <= profile.max_load(g.tp, g.clock_mhz, RequestType.parse(g.pool), strict) + 1e-6


def test_the_plan_publishes_which_types_each_pool_serves() -> None:
    problem = make_problem(toy_profile(), {"SS": 0.3, "SM": 2.0}, Inventory.uniform(8), EXACT)
    assert serves(solve(problem)) == {"SM": ["SM", "SS"]}


def test_a_pool_is_rated_for_every_type_that_may_spill_into_it() -> None:
    # SS's TTFT grows faster with load than SM's; an SM instance that takes SS must meet SS's curve too
    profile, slo = toy_profile(pools=("SM", "SS")), SloTargets()
    settings = SolverSettings(prune=False, headroom=1.0)
    ss = RequestType.parse("SS")

    def ratings(demand: dict[str, float]) -> dict[tuple[str, int, int], float]:
        items = make_problem(profile, demand, Inventory.uniform(8), settings).items
        return {c: max(i.load_rps for i in items if i.config == c) for c in {i.config for i in items}}

    alone, shared = ratings({"SM": 2.0}), ratings({"SM": 2.0, "SS": 1.0})
    sm_configs = [c for c in shared if c[0] == "SM"]
    assert sm_configs
    for c in sm_configs:
        assert shared[c] <= min(alone[c], profile.max_load(c[1], c[2], ss, slo)) + 1e-9
    assert any(shared[c] < alone[c] - 1e-6 for c in sm_configs)


def test_short_inputs_spilled_into_a_long_output_pool_get_a_clock_their_own_rows_allow() -> None:
    # SS misses its 0.25 s target at 1000 MHz at any load, SL there does not: one SL instance at 1000 MHz would
    # carry both by SL's rows, but SS traffic spilled into it must be judged by SS's own rows
    rows = []
    for tp, clock, power in ((2, 1000, 500.0), (2, 2000, 800.0)):
        for load in (0.5, 1.0, 2.0, 4.0):
            rows.append((tp, clock, "SL", load, 0.05 + 0.02 * load, 0.05, power + 20 * load))
            ss_ttft = (0.3 if clock == 1000 else 0.05) + 0.02 * load
            rows.append((tp, clock, "SS", load, ss_ttft, 0.05, power + 20 * load))
    profile = Profile("spill", "toy-gpu", rows)
    d = solve(make_problem(profile, {"SS": 0.3, "SL": 1.0}, Inventory.uniform(16), EXACT))
    assert d.flows_rps["SS"].get("SL", 0.0) > 0  # one instance is cheaper than two
    ss = RequestType.parse("SS")
    assert [(g.pool, g.clock_mhz) for g in d.groups] == [("SL", 2000)]
    for g in d.groups:
        assert g.load_rps_each <= profile.max_load(g.tp, g.clock_mhz, ss, SloTargets()) * EXACT.headroom + 1e-9


def test_a_type_with_no_demand_is_not_routed_anywhere() -> None:
    d = solve(make_problem(toy_profile(), {"SS": 1.0, "SM": 0.0}, Inventory.uniform(8), EXACT))
    assert d.flows_rps == {"SS": {"SS": pytest.approx(1.0)}} and d.unserved_rps == {}
