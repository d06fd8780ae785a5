"""Invariants on a realistic Llama-2-70B/H100 profile (built from the shared characterisation data)."""

from __future__ import annotations

import random

import pytest

from tests.planner.realistic import realistic_profile
from wattgate.planner.greedy import baseline
from wattgate.planner.model import Decision, Inventory, Problem, SolverSettings, make_problem
from wattgate.planner.placement import place
from wattgate.planner.solver import solve
from wattgate.profiles.classes import RequestType

MIX = {"SS": 0.16, "SM": 0.13, "SL": 0.01, "MS": 0.1, "MM": 0.04, "ML": 0.16, "LS": 0.27, "LM": 0.07, "LL": 0.06}


def _demand(rps: float) -> dict[str, float]:
    return {p: rps * share for p, share in MIX.items()}


def _check(problem: Problem, d: Decision) -> None:
    slo = problem.settings.slo
    assert d.gpus_used <= problem.inventory.total_gpus
    served = 0.0
    for g in d.groups:
        cap = problem.profile.max_load(g.tp, g.clock_mhz, RequestType.parse(g.pool), slo)
        assert g.load_rps_each <= cap + 1e-6, g
        served += g.load_rps_each * g.count
    for r, by in d.flows_rps.items():
        assert set(by) <= set(problem.routes(r))
    assert served + sum(d.unserved_rps.values()) == pytest.approx(sum(problem.demand_rps.values()), rel=1e-6)
    placement = place(d.groups, problem.inventory, [])
    assert placement.unplaced == 0


@pytest.mark.parametrize(
    ("rps", "gpus", "covered"),
    [(2.0, 16, True), (8.0, 64, True), (16.0, 64, True), (64.0, 256, True), (40.0, 32, False)],
)
def test_plans_cover_the_load_within_budget_and_slo(rps: float, gpus: int, covered: bool) -> None:
    problem = make_problem(realistic_profile(), _demand(rps), Inventory.uniform(gpus))
    d = solve(problem)
    _check(problem, d)
    assert (not d.unserved_rps) is covered
    if covered:
        assert d.power_w < baseline(realistic_profile(), d.demand_rps, problem.settings.slo).power_w
    else:
        assert any("best partial plan" in a for a in d.alerts)


def test_plans_are_stable_under_small_load_noise() -> None:
    rng = random.Random(3)
    inv = Inventory.uniform(64)
    settings = SolverSettings(period_s=300.0, gap_rel=0.0, time_limit_s=20.0)  # exact: no drift within the gap
    first = solve(make_problem(realistic_profile(), _demand(12.0), inv, settings))
    current = first.counts()
    before = _by_tp(current)
    for _ in range(5):
        noisy = {p: v * (1 - rng.uniform(0.0, 0.03)) for p, v in _demand(12.0).items()}
        d = solve(make_problem(realistic_profile(), noisy, inv, settings, current=current))
        # no instance started or re-sharded (at most a surplus one stopped); clocks may follow the
        # load, as the agents' 5 s clock loop does anyway
        assert all(before.get(k, 0) >= n for k, n in _by_tp(d.counts()).items()), (current, d.counts())


def _by_tp(counts: dict[tuple[str, int, int], int]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for (pool, tp, _clock), n in counts.items():
        out[(pool, tp)] = out.get((pool, tp), 0) + n
    return out
