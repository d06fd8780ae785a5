"""The live reactive path end to end on a real Redis: the real planner loop (toy profile, ``reactive`` on) reads
the gateways' observations; when the SS pool's requests wait for their first token it amends the current plan
between scheduled plans, first with a clock floor that the agent's clock loop (fake GPUs, stand-in engines)
applies at once, then, as the requests still wait, with one more instance that the agent starts; when the
waiting stops the hold runs out and the clock loop has the clocks back."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.agent.agent_support import FakeGpu
from tests.agent.test_agent_loop import build, records
from tests.planner.toy import toy_profile
from wattgate.planner.contract import Keys, Observation, Plan, load_field
from wattgate.planner.forecast import ForecastSettings, Method
from wattgate.planner.loop import LoopSettings, PlannerLoop
from wattgate.planner.model import SolverSettings
from wattgate.planner.reactive import ReactSettings
from wattgate.planner.store import PlannerStore

KEYS = Keys()
NOW = 1_700_000_040.0
TOP = 1980  # the fake GPUs' highest clock: the toy profile's top (2000 MHz) snapped to what they support


def loop_on(url: str, clock: list[float], reactive: bool) -> PlannerLoop:
    settings = LoopSettings(
        cluster_period_s=1800,
        pool_period_s=1800,  # no scheduled plan in this test after the first
        quantile=None,
        forecast=ForecastSettings(method=Method.PEAK, margin=0.0),
        solver=SolverSettings(gap_rel=0.0, time_limit_s=60.0),
        reactive=ReactSettings() if reactive else None,
    )
    return PlannerLoop(PlannerStore(url), toy_profile(pools=("SS",)), settings, lambda: clock[0], "p")


def seed(r: redis.Redis, rps: float) -> None:
    end = int(NOW // 60)
    for m in range(end - 20, end):
        r.hset(KEYS.load_minute(m), load_field("SS", "requests"), rps * 60)


def waited(r: redis.Redis, now: float, ttft_s: float, n: int = 3) -> None:
    """``n`` SS requests finished at ``now`` after ``ttft_s`` to their first token, as a gateway records them."""
    for i in range(n):
        obs = Observation(f"r{now}-{i}", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, ttft_s, 0.02, 200, "x", "m", now)
        r.xadd(KEYS.observations, {"json": obs.to_json()})


def ss(plan: Plan) -> dict[str, int]:
    """SS instance id -> its clock floor."""
    return {i.id: i.clock_floor_mhz for i in plan.instances if i.pool == "SS"}


def test_waiting_requests_raise_the_clock_then_add_an_instance_before_the_next_plan(
    tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    gpus = [FakeGpu(i) for i in range(8)]
    agent = build(tmp_path, redis_url, gpus, toy_profile(pools=("SS",)))
    clock = [NOW]
    loop = loop_on(redis_url, clock, reactive=True)
    try:
        seed(r, 1.0)
        agent.publish()  # the heartbeat: the planner plans on node n1's 8 GPUs
        assert loop.tick() == "published"
        first = loop.last_plan
        assert first is not None and set(ss(first).values()) == {0}
        agent.tick(clock[0])
        assert {v.state for v in records(r).values()} == {"ready"}
        held = [g for i in first.instances for g in i.gpus]
        assert all(gpus[g].locked is not None and gpus[g].locked < TOP for g in held)  # idle: a low clock

        # requests wait 0.2 s of the 0.25 s target (past half): the clocks first, no instance yet
        clock[0] += 5
        waited(r, clock[0] - 1, 0.2)
        assert loop.tick() == "amended"
        raised = loop.last_plan
        assert raised is not None and raised.version == first.version + 1
        assert set(ss(raised)) == set(ss(first)) and set(ss(raised).values()) == {TOP + 20}  # the profile's 2000
        assert any(x.startswith("reactive path: SS") and "measured" in x for x in raised.reasons)
        agent.publish()
        agent.tick(clock[0])
        assert all(gpus[g].locked == TOP for g in held)  # the clock loop honours the floor at once
        assert agent.clock_loop is not None and {d.reason.name for d in agent.clock_loop.last.values()} == {"FLOOR"}

        # they still wait: one more SS instance, on GPUs the plan left free, held at the top too
        clock[0] += 5
        waited(r, clock[0] - 1, 0.3)
        assert loop.tick() == "amended"
        grown = loop.last_plan
        assert grown is not None and grown.version == raised.version + 1
        new = set(ss(grown)) - set(ss(raised))
        assert len(new) == 1 and set(ss(grown).values()) == {TOP + 20}
        (added,) = [i for i in grown.instances if i.id in new]
        assert not set(added.gpus) & set(held)
        agent.publish()
        agent.tick(clock[0])
        assert {k: v.state for k, v in records(r).items()} == dict.fromkeys(ss(grown), "ready")
        assert all(gpus[g].locked == TOP for g in added.gpus)
        assert loop.counters.published == 1 and loop.counters.amended == 2  # no scheduled plan came in between

        # the waiting stops: nothing new while the hold lasts, then a stand-down gives the clocks back
        clock[0] += 5
        assert loop.tick() == "idle"
        clock[0] += 60
        assert loop.tick() == "amended"
        calm = loop.last_plan
        assert calm is not None and set(ss(calm)) == set(ss(grown)) and set(ss(calm).values()) == {0}
        agent.publish()
        agent.tick(clock[0])
        assert all(gpus[g].locked is not None and gpus[g].locked < TOP for g in [*held, *added.gpus])
    finally:
        agent.shutdown()
        assert isinstance(loop.store, PlannerStore)
        loop.store.close()
        r.close()


def test_off_by_default_the_same_signal_changes_nothing(tmp_path: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    clock = [NOW]
    loop = loop_on(redis_url, clock, reactive=False)
    assert LoopSettings().reactive is None
    try:
        seed(r, 1.0)
        gpus = [FakeGpu(i) for i in range(8)]
        agent = build(tmp_path, redis_url, gpus)
        agent.publish()
        assert loop.tick() == "published"
        for _ in range(3):
            clock[0] += 5
            waited(r, clock[0] - 1, 0.3)
            assert loop.tick() == "idle"
        assert loop.counters.amended == 0
    finally:
        assert isinstance(loop.store, PlannerStore)
        loop.store.close()
        r.close()
