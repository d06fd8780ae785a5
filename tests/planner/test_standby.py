"""Warm standby in the plan: ``planner.standby.keep_asleep`` (pure) and the planner loop deciding it from the
load windows and the agents' heartbeats on a real Redis."""

from __future__ import annotations

import pytest
import redis

from tests.planner.toy import toy_profile
from wattgate.planner.contract import Heartbeat, Keys, Plan, PlannedInstance, load_field
from wattgate.planner.forecast import DAY_MIN, ForecastSettings, Method
from wattgate.planner.loop import LoopSettings, PlannerLoop
from wattgate.planner.model import Group, Inventory, Node, SolverSettings
from wattgate.planner.placement import place
from wattgate.planner.standby import keep_asleep
from wattgate.planner.store import PlannerStore

NOW = 1_700_000_040.0  # on a minute boundary
SOLVER = SolverSettings(gap_rel=0.0, time_limit_s=60.0)  # see test_loop.py: plans a function of the load alone


def inst(iid: str, gpus: list[int], *, pool: str = "SS", node: str = "a", standby: bool = False) -> PlannedInstance:
    return PlannedInstance(iid, pool, node, gpus, len(gpus), 1000, 0.0 if standby else 2.0, 500.0, standby=standby)


def asleep_w(p: PlannedInstance) -> float:
    return 60.0 * p.tp


def test_keep_asleep_keeps_dropped_instances_only_where_sleep_mode_pool_gpus_and_age_allow() -> None:
    previous = [
        inst("kept", [0, 1]),
        inst("dropped", [2, 3]),
        inst("other-pool", [4, 5], pool="SM"),
        inst("no-sleep-node", [0, 1], node="b"),
        inst("gpus-retaken", [6, 7]),
        inst("old-sleeper", [0, 1], node="c", standby=True),
        inst("young-sleeper", [2, 3], node="c", standby=True),
    ]
    placed = [inst("kept", [0, 1]), inst("new", [6, 7])]
    out = keep_asleep(
        previous,
        placed,
        sleep_nodes={"a", "c"},
        may_need={"SS"},
        asleep_since={"old-sleeper": 0.0, "young-sleeper": 100.0},
        now=240.0,
        max_s=240.0,
        sleeping_power_w=asleep_w,
    )
    assert [p.id for p in out] == ["dropped", "young-sleeper"]
    first = out[0]
    assert first.standby and first.load_rps == 0.0 and first.power_w == 120.0
    assert (first.pool, first.node, first.gpus, first.tp, first.sm_clock_mhz) == ("SS", "a", [2, 3], 2, 1000)
    # off: nothing is kept asleep
    off = keep_asleep(
        previous,
        placed,
        sleep_nodes={"a", "c"},
        may_need={"SS"},
        asleep_since={},
        now=240.0,
        max_s=0.0,
        sleeping_power_w=asleep_w,
    )
    assert off == ()


def test_placement_wakes_a_standby_instance_only_after_the_serving_ones() -> None:
    running = [inst("serving", [2, 3]), inst("asleep", [0, 1], standby=True)]
    one = Group(pool="SS", tp=2, clock_mhz=1000, count=1, load_rps_each=2.0, power_w_each=600.0)
    inventory = Inventory((Node("a", 8),))
    placed = place([one], inventory, running)
    assert [(p.id, p.standby) for p in placed.instances] == [("serving", False)]
    two = place([Group("SS", 2, 1000, 2, 2.0, 600.0)], inventory, running)
    assert sorted((p.id, p.standby) for p in two.instances) == [("asleep", False), ("serving", False)]
    assert two.started == 0  # woken, not started


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def seed(url: str, now: float, rps: float, *, spike_in_min: tuple[int, int] | None = None) -> None:
    """SS load: ``rps`` in every minute of the last day and ten minutes; ``spike_in_min`` (from, to): yesterday,
    the minutes that far ahead of now carried 10x (the template forecast says the load comes back then)."""
    r = redis.Redis.from_url(url)
    keys = Keys()
    end = int(now // 60)
    pipe = r.pipeline(transaction=False)
    for m in range(end - DAY_MIN - 20, end):
        ahead = m - (end - DAY_MIN)
        spike = spike_in_min is not None and spike_in_min[0] <= ahead < spike_in_min[1]
        pipe.hset(keys.load_minute(m), load_field("SS", "requests"), rps * 60 * (10 if spike else 1))
    pipe.execute()
    r.close()


def beat(url: str, node: str, *, sleep_mode: bool) -> None:
    r = redis.Redis.from_url(url)
    r.sadd(Keys().nodes, node)
    r.set(Keys().heartbeat(node), Heartbeat(node, NOW, None, 8, True, sleep_mode=sleep_mode).to_json())
    r.close()


def loop_on(url: str, clock: Clock, *, standby_max_s: float = 240.0) -> PlannerLoop:
    settings = LoopSettings(
        cluster_period_s=60,
        pool_period_s=60,
        quantile=None,  # the classic forecast, its template method: yesterday's minutes ahead decide
        forecast=ForecastSettings(method=Method.TEMPLATE, margin=0.0),
        solver=SOLVER,
        standby_max_s=standby_max_s,
    )
    return PlannerLoop(PlannerStore(url), toy_profile(pools=("SS",)), settings, clock, "p")


def ss(plan: Plan) -> tuple[set[str], set[str]]:
    """(active, standby) SS instance ids."""
    active = {i.id for i in plan.instances if i.pool == "SS" and not i.standby}
    return active, {i.id for i in plan.instances if i.pool == "SS" and i.standby}


def close(loop: PlannerLoop) -> None:
    assert isinstance(loop.store, PlannerStore)
    loop.store.close()


def tick(loop: PlannerLoop) -> Plan:
    assert loop.tick() == "published"
    assert loop.last_plan is not None
    return loop.last_plan


def test_a_pool_that_shrinks_keeps_instances_asleep_when_the_forecast_says_the_load_comes_back(redis_url: str) -> None:
    beat(redis_url, "a", sleep_mode=True)
    clock = Clock()
    loop = loop_on(redis_url, clock)
    try:
        seed(redis_url, clock.t, 12.0)
        busy = tick(loop)
        active, _ = ss(busy)
        assert len(active) >= 3

        # load falls, but yesterday it came back 3 minutes from now: the dropped instances sleep
        clock.t += 60
        seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))
        quiet = tick(loop)
        awake, asleep = ss(quiet)
        assert len(awake) == 1 and asleep == active - awake
        sleepers = [i for i in quiet.instances if i.standby]
        # at its lowest clock the toy's TP2 draws 500 W + 40 W per req/s, its TP4 900 W + 30 W per req/s: asleep,
        # the no-load power (modelled)
        assert all(i.load_rps == 0.0 and i.power_w == pytest.approx({2: 500.0, 4: 900.0}[i.tp]) for i in sleepers)
        assert quiet.predicted_power_w == pytest.approx(sum(i.power_w for i in quiet.instances), abs=0.2)
        assert sum("warm standby" in r and "modelled" in r for r in quiet.reasons) == len(sleepers)
        r = redis.Redis.from_url(redis_url)
        wire = Plan.from_json(r.get(Keys().plan) or b"")  # what agents and gateways read
        r.close()
        assert {i.id for i in wire.instances if i.standby} == asleep

        # the load is back: the same instances, planned active (their agents wake them), nothing started
        clock.t += 60
        seed(redis_url, clock.t, 12.0)
        back = tick(loop)
        assert ss(back) == (active, set())
    finally:
        close(loop)


def test_no_standby_without_sleep_mode_without_a_later_rise_or_past_the_longest_wait(redis_url: str) -> None:
    beat(redis_url, "a", sleep_mode=False)
    clock = Clock()
    loop = loop_on(redis_url, clock)
    try:
        seed(redis_url, clock.t, 12.0)
        active, _ = ss(tick(loop))
        clock.t += 60
        seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))
        assert ss(tick(loop))[1] == set()  # the node's agent cannot sleep: they stop

        beat(redis_url, "a", sleep_mode=True)
        clock.t += 60
        seed(redis_url, clock.t, 12.0)
        assert len(ss(tick(loop))[0]) == len(active)  # restarted cold (the mix may differ)
        clock.t += 60
        seed(redis_url, clock.t, 1.0)  # no rise ahead: nothing is kept asleep
        assert ss(tick(loop))[1] == set()

        clock.t += 60
        seed(redis_url, clock.t, 12.0)
        tick(loop)
        clock.t += 60
        seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))
        _, asleep = ss(tick(loop))
        assert asleep
        for _ in range(3):  # 180 s asleep: still kept
            clock.t += 60
            seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))
            assert ss(tick(loop))[1] == asleep
        clock.t += 60  # 240 s: a cold start is cheaper than more sleep
        seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))
        assert ss(tick(loop))[1] == set()
    finally:
        close(loop)
