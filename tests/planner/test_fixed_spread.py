"""A fixed fleet's plan after the solve (``planner.fixedplan``): instances shared out among the pools by their
load, and every request type with demand keeps a pool on its spill chain (else the gateway would refuse it)."""

from __future__ import annotations

import pytest

from tests.planner.test_fixed import EXACT, fleet
from tests.planner.toy import toy_profile
from wattgate.planner.epoch import plan_epoch
from wattgate.planner.fixedplan import balance_fixed, cover_every_type
from wattgate.planner.model import Decision, Group, Inventory, SolveStatus
from wattgate.profiles.classes import RequestType, spill_chain


def _by_pool(groups: tuple[Group, ...]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for g in groups:
        n, load = out.get(g.pool, (0, 0.0))
        out[g.pool] = (n + g.count, load + g.count * g.load_rps_each)
    return out


def test_idle_fixed_instances_join_the_busiest_pools_and_share_their_load() -> None:
    profile = toy_profile()
    clock = profile.clocks(2, RequestType.parse("SS"))[0]
    groups = (
        Group("SS", 2, clock, 1, 3.0, 500.0),
        Group("SM", 2, clock, 1, 1.0, 400.0),
        Group("SM", 2, clock, 2, 0.0, 300.0),  # idle: the solve had nothing for them
    )
    out = balance_fixed(groups, profile, EXACT)
    assert sum(g.count for g in out) == 4  # nobody started or stopped
    # water-filling by load per instance: SS (3.0) takes the first, then SS (1.5) vs SM (1.0): SS again
    assert _by_pool(out) == {"SS": (3, pytest.approx(3.0)), "SM": (1, pytest.approx(1.0))}
    assert all(g.load_rps_each == pytest.approx(1.0) for g in out)
    assert balance_fixed(out, profile, EXACT) == out  # nothing idle: nothing moves
    assert balance_fixed(groups[2:], profile, EXACT) == groups[2:]  # no busy pool: nothing to back up


def test_a_pool_with_spare_capacity_gives_an_instance_to_a_busy_one_but_keeps_one() -> None:
    profile = toy_profile()
    clock = profile.clocks(2, RequestType.parse("SS"))[0]
    groups = (Group("SS", 2, clock, 1, 4.0, 500.0), Group("SM", 2, clock, 3, 0.1, 300.0))
    out = balance_fixed(groups, profile, EXACT)
    pools = _by_pool(out)
    assert sum(n for n, _ in pools.values()) == 4 and pools["SM"][0] >= 1  # SM keeps an instance for its load
    assert pools["SS"][0] > 1 and pools["SS"][1] == pytest.approx(4.0) and pools["SM"][1] == pytest.approx(0.3)
    assert balance_fixed(out, profile, EXACT) == out  # balanced: a re-plan of the same plan moves nothing
    lone = (Group("SS", 2, clock, 1, 4.0, 500.0), Group("SM", 2, clock, 1, 0.1, 300.0))
    assert set(balance_fixed(lone, profile, EXACT)) == set(lone)  # SM's only instance stays


def test_a_type_with_no_pool_on_its_spill_chain_gets_one_instance() -> None:
    profile = toy_profile()
    clock = profile.clocks(2, RequestType.parse("SS"))[0]
    decision = Decision(
        groups=(),
        demand_rps={"SS": 2.0, "SM": 1.0},
        flows_rps={"SS": {"SS": 2.0}},
        unserved_rps={"SM": 1.0},
        gpu_budget=0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        fixed_groups=(Group("SS", 2, clock, 2, 1.0, 500.0),),
    )
    assert not any(q.name == "SS" for q in spill_chain(RequestType.parse("SM")))  # SM cannot go to SS
    out = cover_every_type(decision, profile, EXACT)
    assert _by_pool(out) == {"SS": (1, pytest.approx(2.0)), "SM": (1, pytest.approx(1.0))}
    (sm,) = (g for g in out if g.pool == "SM")
    assert sm.clock_mhz == profile.clocks(2, RequestType.parse("SM"))[-1] and sm.power_w_each > 0
    covered = Decision(**{**decision.__dict__, "demand_rps": {"SS": 2.0}})
    assert cover_every_type(covered, profile, EXACT) == decision.fixed_groups  # SS alone: nothing moves


def test_plan_epoch_leaves_no_fixed_instance_idle_while_a_pool_has_load() -> None:
    epoch = plan_epoch(toy_profile(), {"SS": 0.5}, Inventory(()), EXACT, fixed=fleet(3))
    assert sorted(p.id for p in epoch.fixed) == ["e0", "e1", "e2"]
    assert {p.pool for p in epoch.fixed} == {"SS"}
    assert all(p.load_rps > 0 for p in epoch.fixed)
    assert sum(p.load_rps for p in epoch.fixed) == pytest.approx(0.5)
