"""The headroom knob: the share of an instance's SLO-feasible capacity plans (and the clock policy) may use."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.planner.toy import toy_profile
from wattgate.agent.clock_policy import ClockInput, ClockReason, choose_clock
from wattgate.cli import main
from wattgate.planner.contract import ContractError, Plan
from wattgate.planner.model import (
    DEFAULT_HEADROOM,
    Inventory,
    PlannerError,
    SolverSettings,
    build_items,
    make_problem,
)
from wattgate.planner.solver import solve
from wattgate.planner.store import PlannerStore
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.profiles.table import Profile


def test_items_are_rated_at_the_headroom_share_of_the_slo_capacity() -> None:
    profile, slo = toy_profile(), SloTargets()
    full = {(i.config): i.load_rps for i in build_items(profile, SolverSettings(prune=False, headroom=1.0))}
    half = build_items(profile, SolverSettings(prune=False, headroom=0.5))
    assert half
    for it in half:
        cap = profile.max_load(it.tp, it.clock_mhz, it.pool, slo)
        assert it.load_rps <= 0.5 * cap + 1e-9
    top_half = {i.config: i.load_rps for i in half}
    for config, rating in top_half.items():
        assert max(v for c, v in full.items() if c == config) >= rating
    assert max(top_half.values()) < max(full.values())


def test_less_headroom_plans_more_capacity_for_the_same_load() -> None:
    demand, inv = {"SS": 3.0, "SM": 1.5}, Inventory.uniform(32)
    tight = solve(make_problem(toy_profile(), demand, inv, SolverSettings(gap_rel=0.0, headroom=1.0)))
    roomy = solve(make_problem(toy_profile(), demand, inv, SolverSettings(gap_rel=0.0, headroom=0.6)))
    assert not tight.unserved_rps or sum(tight.unserved_rps.values()) == pytest.approx(0.0)
    assert sum(roomy.unserved_rps.values()) == pytest.approx(0.0)
    assert roomy.power_w > tight.power_w  # modelled
    for g in roomy.groups:
        assert (
            g.load_rps_each
            <= 0.6 * toy_profile().max_load(g.tp, g.clock_mhz, RequestType.parse(g.pool), SloTargets()) + 1e-9
        )


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_headroom_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(PlannerError, match="headroom"):
        SolverSettings(headroom=bad)


def test_plans_carry_their_headroom_and_refuse_a_bad_one() -> None:
    plan = Plan(1, 0.0, "m", [], {}, 0.0, 0.0, headroom=0.8)
    assert Plan.from_json(plan.to_json()).headroom == 0.8
    old = json.loads(plan.to_json())
    del old["headroom"]
    assert Plan.from_json(old).headroom == 1.0  # a plan from before the field: no headroom
    for bad in (0, 2, "0.8", True):
        with pytest.raises(ContractError, match="headroom"):
            Plan.from_json({**old, "headroom": bad})


def test_clock_policy_keeps_the_headroom_free() -> None:
    # SS on TP2, target 0.25 s: 800 MHz meets it up to 1.75 req/s, 1205 MHz up to 8 req/s
    rows = []
    for clock, ttft, power in ((800, 0.20, 500.0), (1205, 0.10, 600.0)):
        rows.append((2, clock, "SS", 1.0, ttft, 0.05, power))
        rows.append((2, clock, "SS", 4.0, ttft * 2, 0.05, power + 100))
        rows.append((2, clock, "SS", 8.0, ttft * 2.2, 0.05, power + 200))
    profile = Profile("m", "H100", rows)
    x = ClockInput("SS", 2, 1.5, 1)
    assert choose_clock(profile, SloTargets(), (800, 1205), x).sm_clock_mhz == 800  # at 86% of 800's capacity
    d = choose_clock(profile, SloTargets(), (800, 1205), dataclasses.replace(x, headroom=0.8))
    assert d.sm_clock_mhz == 1205 and d.reason is ClockReason.LOWEST_ENERGY


@pytest.fixture
def profile_path(tmp_path: Path) -> str:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(toy_profile().to_document()))
    return str(path)


def _worst_share(capsys: pytest.CaptureFixture[str]) -> float:
    """The highest planned load of any instance as a share of its config's SLO capacity (modelled)."""
    out = json.loads(capsys.readouterr().out)
    profile, slo = toy_profile(), SloTargets()
    return max(
        float(p["load_rps_each"]) / profile.max_load(p["tp"], p["sm_clock_mhz"], RequestType.parse(p["pool"]), slo)
        for p in out["pools"]
    )


def test_plan_cli_headroom(profile_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--profile", profile_path, "--gpus", "32", "--load", "SS=3.0,SM=2.0", "--json"]
    assert main([*args, "--headroom", "0.5"]) == 0
    assert _worst_share(capsys) <= 0.5 + 1e-6
    assert main(args) == 0  # the default
    assert _worst_share(capsys) <= DEFAULT_HEADROOM + 1e-6
    assert main([*args, "--headroom", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "headroom" in err and "Traceback" not in err


def test_planner_publishes_its_headroom(profile_path: str, redis_url: str) -> None:
    args = ["planner", "--profile", profile_path, "--redis-url", redis_url, "--gpus", "16", "--once"]
    assert main([*args, "--headroom", "0.7"]) == 0
    plan = PlannerStore(redis_url).current_plan()
    assert plan is not None and plan.headroom == 0.7
    assert any("70% of their SLO-feasible capacity" in r for r in plan.reasons)
