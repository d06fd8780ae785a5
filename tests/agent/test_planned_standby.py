"""Warm standby decided by the planner and carried out by the agent, end to end on a real Redis: the real planner
loop (the toy profile, the template forecast over a day of load windows) reads the agent's heartbeat
(``sleep_mode``), shrinks a pool whose load falls while yesterday's came back minutes later, and keeps the
dropped instances on standby; the agent drains them and puts their vLLM servers (the fake) to sleep; when the
load is back the next plan wakes the same processes."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.agent.agent_support import FakeGpu
from tests.agent.test_sleep_mode import LOWEST_MHZ, build, events, heartbeat, is_sleeping, records
from tests.planner.test_standby import Clock, close, loop_on, seed, ss, tick
from wattgate.planner.contract import Keys, NodeTelemetry


def test_the_planner_puts_dropped_instances_on_standby_and_the_agent_sleeps_and_wakes_them(
    tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    gpus = [FakeGpu(i) for i in range(8)]
    agent = build(tmp_path, redis_url, gpus)
    clock = Clock()
    loop = loop_on(redis_url, clock)
    try:
        assert heartbeat(agent, r).sleep_mode  # what the planner reads: this node's engines can sleep

        seed(redis_url, clock.t, 12.0)
        busy = tick(loop)
        assert {i.node for i in busy.instances} == {"n1"}
        agent.tick()
        active, _ = ss(busy)
        assert len(active) >= 2 and {k: v.state for k, v in records(r).items()} == dict.fromkeys(active, "ready")
        pids = {i: agent.act.instances[i].engine.pid for i in active}

        clock.t += 60
        seed(redis_url, clock.t, 1.0, spike_in_min=(3, 5))  # quiet now, back in three minutes yesterday
        quiet = tick(loop)
        awake, asleep = ss(quiet)
        assert asleep and awake and awake | asleep == active
        agent.tick()
        assert {k: v.state for k, v in records(r).items()} == {
            **dict.fromkeys(awake, "ready"),
            **dict.fromkeys(asleep, "asleep"),
        }
        assert all(is_sleeping(agent, i) for i in asleep) and not any(is_sleeping(agent, i) for i in awake)
        assert len(events(tmp_path, "sleep")) == len(asleep)
        assert heartbeat(agent, r).asleep == sorted(asleep)
        # an asleep instance still holds its GPUs: locked at their lowest clock, read in the node's telemetry,
        # and its (modelled) sleeping power counted in the plan
        held = [g for i in quiet.instances if i.standby for g in i.gpus]
        assert held and all(gpus[g].locked == LOWEST_MHZ for g in held)
        tel = NodeTelemetry.from_json(r.get(Keys().telemetry("n1")) or "")
        assert {g.index for g in tel.gpus} >= set(held) and {tel.instances[i] for i in asleep} == {"asleep"}
        assert quiet.predicted_power_w >= sum(i.power_w for i in quiet.instances if i.standby) > 0

        clock.t += 60
        seed(redis_url, clock.t, 12.0)  # the load is back: the same instances, woken in place
        back = tick(loop)
        assert ss(back) == (active, set())
        agent.tick()
        assert {k: v.state for k, v in records(r).items()} == dict.fromkeys(active, "ready")
        assert {i: agent.act.instances[i].engine.pid for i in active} == pids
        assert len(events(tmp_path, "wake")) == len(asleep) and heartbeat(agent, r).asleep == []
    finally:
        agent.shutdown()
        close(loop)
        r.close()
    assert [g.locked for g in gpus] == [None] * 8
