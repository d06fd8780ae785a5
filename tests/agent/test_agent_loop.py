"""The agent's control loop in-process: fake GPUs, a real Redis, stand-in engines, ``tick()``."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agent.agent_support import FakeGpu, actuator, standin_command
from tests.agent.test_clock_policy import profile as small_profile
from wattgate.agent.actuator import Timeouts
from wattgate.agent.agent import Agent
from wattgate.agent.clock_loop import ClockLoop
from wattgate.agent.clock_policy import BurstRule, ClockReason
from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.options import EngineOptions
from wattgate.agent.metrics import AgentMetrics
from wattgate.agent.store import AgentStore
from wattgate.agent.telemetry import Telemetry
from wattgate.embedded_redis import EmbeddedRedis, free_port
from wattgate.planner.contract import (
    Heartbeat,
    InstanceRecord,
    Keys,
    NodeTelemetry,
    Plan,
    PlannedInstance,
    load_field,
)
from wattgate.profiles.classes import SloTargets
from wattgate.profiles.table import Profile

KEYS = Keys()


def plan(version: int, *instances: tuple[str, str, list[int]]) -> Plan:
    inst = [PlannedInstance(i, pool, "n1", g, len(g), 1980, 1.0, 300.0) for i, pool, g in instances]
    return Plan(version, time.time(), "m", inst, {}, 0.0, 0.0)


def build(
    tmp: Path,
    url: str,
    gpus: list[FakeGpu],
    prof: Profile | None = None,
    *,
    burst_hold_s: float = 0.0,
    env: dict[str, str] | None = None,
) -> Agent:
    clocks = ClockController(gpus, tmp / "locks.json")
    store = AgentStore(url, KEYS, timeout_s=0.5)
    opts = EngineOptions(
        kind=EngineKind.VLLM, log_dir=tmp / "logs", command=standin_command(), stop_grace_s=2, env=env or {}
    )
    timeouts = Timeouts(drain_s=2, drain_notice_s=0.05, start_s=20, poll_s=0.05)
    act = actuator(tmp, gpus, opts, clocks=clocks, store=store, timeouts=timeouts)
    loop = None
    if prof is not None:
        loop = ClockLoop(act, prof, SloTargets(), store, window_s=10, burst=BurstRule(burst_hold_s))
    return Agent(
        node="n1",
        actuator=act,
        clocks=clocks,
        store=store,
        telemetry=Telemetry("n1", gpus, clocks, act),
        clock_loop=loop,
        clock_interval_s=5.0,
        metrics=AgentMetrics(),
    )


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def records(r: redis.Redis) -> dict[str, InstanceRecord]:
    return {k: InstanceRecord.from_json(v) for k, v in r.hgetall(KEYS.instances).items()}


def tp1_profile() -> Profile:
    """The clock tests' small profile on TP1 (one fake GPU per instance)."""
    return Profile(
        "m", "H100", [(1, c, t, ld, tt, tb, p) for (_, c, t, ld, tt, tb, p) in small_profile().to_document()["rows"]]
    )


def test_scale_down_drains_before_stopping(
    tmp_path: Path, redis_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    agent = build(tmp_path, redis_url, gpus)
    r.set(KEYS.plan, plan(1, ("a", "SS", [0]), ("b", "SM", [1])).to_json())
    try:
        agent.tick()
        recs = records(r)
        assert {k: v.state for k, v in recs.items()} == {"a": "ready", "b": "ready"}
        assert recs["b"].base_url.startswith("http://127.0.0.1:") and recs["b"].engine == "vllm"
        seen: list[str] = []
        ps = r.pubsub()
        ps.subscribe(KEYS.instance_events)
        ps.get_message(timeout=1)

        def watch() -> None:
            while (m := ps.get_message(timeout=5)) is not None:
                raw = r.hget(KEYS.instances, m["data"])
                seen.append(f"{m['data']}:{InstanceRecord.from_json(raw).state if raw else 'gone'}")
                if seen[-1] == "b:gone":
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        r.set(KEYS.plan, plan(2, ("a", "SS", [0])).to_json())
        agent.tick()
        watcher.join(timeout=10)
        ps.close()
        assert seen[0] == "b:draining" and seen[-1] == "b:gone"
        assert set(records(r)) == {"a"} and set(agent.act.instances) == {"a"}
        agent.publish()
        tel = NodeTelemetry.from_json(r.get(KEYS.telemetry("n1")) or "")
        assert tel.instances == {"a": "ready"} and [g.source for g in tel.gpus] == ["modelled", "modelled"]
        hb = Heartbeat.from_json(r.get(KEYS.heartbeat("n1")) or "")
        assert hb.plan_version == 2 and hb.clock_control and r.ttl(KEYS.heartbeat("n1")) > 0
        r.set(KEYS.plan, '{"schema": 99, "version": 3}')  # a plan of another schema: refused, last plan kept
        agent.tick()
        agent.publish()
        assert agent.plan is not None and agent.plan.version == 2 and set(agent.act.instances) == {"a"}
        hb = Heartbeat.from_json(r.get(KEYS.heartbeat("n1")) or "")
        assert any("schema version 99" in n for n in hb.notes) and agent.redis_ok
        assert agent.metrics is not None
        text = agent.metrics.text()
        assert 'wattgate_agent_gpu_power_watts{gpu="0",source="modelled",uuid="GPU-fake-0"}' in text
        assert 'wattgate_agent_instances{state="ready"} 1.0' in text and "wattgate_agent_redis_up 1.0" in text
    finally:
        agent.shutdown()
    assert records(r) == {} and gpus[0].locked is None
    # Redis was up throughout: the registry writer never said it was away, or back
    assert [m.getMessage() for m in caplog.records if m.name == "wattgate.agent.actuator" and "redis" in m.msg] == []


def test_clock_loop_follows_the_pool_load(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    prof = tp1_profile()
    agent = build(tmp_path, redis_url, gpus, prof)
    r.set(KEYS.plan, plan(1, ("a", "SS", [0]), ("b", "SS", [1])).to_json())
    now = time.time()
    try:
        agent.tick(now)
        assert gpus[0].locked == 800 and gpus[1].locked == 800  # idle: a lone SS request meets 0.25 s at 800 MHz
        # 16 req/s in the SS pool's load windows, shared by its two ready instances: 8 req/s each
        for s in range(int(now) + 5 - 10, int(now) + 5):
            r.hset(KEYS.load_second(s), load_field("SS", "requests"), 16)
        agent.tick(now + 5)
        assert gpus[0].locked == 1200 and gpus[1].locked == 1200
        assert records(r)["a"].sm_clock_mhz == 1200
        calls = list(gpus[0].lock_calls)
        agent.tick(now + 5.5)  # not due yet
        agent.tick(now + 10)  # due, same decision: no NVML call
        assert gpus[0].lock_calls == calls
    finally:
        agent.shutdown()
    assert gpus[0].locked is None and gpus[1].locked is None


@pytest.mark.parametrize("hold_s", [3.0, 0.0])
def test_a_queue_locks_the_top_clock_at_the_next_tick_until_it_has_been_empty_the_hold(
    tmp_path: Path, redis_url: str, r: redis.Redis, hold_s: float
) -> None:
    """The burst rule on a fake GPU: the stand-in engine reports requests waiting (vLLM's
    ``vllm:num_requests_waiting``) between two clock-loop ticks; the next control tick locks the top clock, and
    the loop's choice returns once the queue has been empty ``hold_s``. With a hold of 0 the rule is off."""
    gpus = [FakeGpu(0)]
    flight = tmp_path / "in-flight"
    flight.write_text("0")
    agent = build(
        tmp_path, redis_url, gpus, tp1_profile(), burst_hold_s=hold_s, env={"STANDIN_IN_FLIGHT_FILE": str(flight)}
    )
    r.set(KEYS.plan, plan(1, ("a", "SS", [0])).to_json())
    top = max(gpus[0].supported_sm_clocks_mhz())
    now = time.time()
    try:
        agent.tick(now)
        assert gpus[0].locked == 800  # idle: the clock loop's lowest clock
        flight.write_text("1000")  # more than the stand-in's batch: the rest wait in its queue
        agent.tick(now + 1)  # one control tick later, the clock loop not due (every 5 s)
        assert gpus[0].locked == (top if hold_s else 800)
        if not hold_s:
            return
        assert records(r)["a"].sm_clock_mhz == top
        flight.write_text("0")  # the queue empties
        agent.tick(now + 2)
        assert gpus[0].locked == top  # held: empty for 1 s of the 3
        agent.tick(now + 3.5)
        assert gpus[0].locked == top
        agent.tick(now + 4.5)  # empty since the queue was last seen at now + 1: 3.5 s > the hold
        assert gpus[0].locked == 800
        flight.write_text("1000")
        agent.tick(now + 5)  # the clock loop's tick during a burst: the burst rule's top clock stands
        assert gpus[0].locked == top and agent.clock_loop is not None
        assert agent.clock_loop.last["a"].reason is ClockReason.BURST
    finally:
        agent.shutdown()
    assert gpus[0].locked is None


def test_clock_loop_keeps_the_plans_headroom(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    """8 req/s per instance is at the SLO limit of 1205-1980 MHz: with the plan's headroom 0.8 no clock
    carries it within 80% of its capacity, so the policy takes the highest clock, not 1200."""
    gpus = [FakeGpu(0)]
    prof = tp1_profile()
    agent = build(tmp_path, redis_url, gpus, prof)
    r.set(KEYS.plan, dataclasses.replace(plan(1, ("a", "SS", [0])), headroom=0.8).to_json())
    now = time.time()
    try:
        agent.tick(now)
        for s in range(int(now) + 5 - 10, int(now) + 5):
            r.hset(KEYS.load_second(s), load_field("SS", "requests"), 8)
        agent.tick(now + 5)
        assert gpus[0].locked == max(gpus[0].supported_sm_clocks_mhz())
    finally:
        agent.shutdown()


def test_redis_down_keeps_serving_and_reregisters(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(port=port).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    agent = build(tmp_path, server.url, [FakeGpu(0)])
    try:
        client.set(KEYS.plan, plan(1, ("a", "SS", [0])).to_json())
        agent.tick()
        assert set(records(client)) == {"a"}
        server.stop()
        agent.tick()
        agent.publish()
        assert not agent.redis_ok and agent.plan is not None and agent.plan.version == 1
        assert agent.metrics is not None and "wattgate_agent_redis_up 0.0" in agent.metrics.text()
        assert agent.act.instances["a"].engine.healthy()  # still serving on the last plan
        server = EmbeddedRedis(port=port).start()  # a fresh, empty Redis
        client = redis.Redis.from_url(server.url, decode_responses=True)
        events = client.pubsub()  # type: ignore[no-untyped-call]
        events.subscribe(KEYS.instance_events)
        assert events.get_message(timeout=5)["type"] == "subscribe"
        agent.tick()
        agent.publish()
        assert agent.redis_ok
        assert records(client)["a"].state == "ready"  # re-registered
        # and announced, so gateways see it at once (not at their next full registry read)
        announced = [events.get_message(timeout=2) for _ in range(3)]
        assert "a" in [m["data"] for m in announced if m and m["type"] == "message"]
        agent.publish()  # announced once, not on every publish
        assert events.get_message(timeout=0.5) is None
        events.close()
        assert Heartbeat.from_json(client.get(KEYS.heartbeat("n1")) or "").plan_version == 1
    finally:
        agent.shutdown()
        client.close()
        server.stop()


def test_until_a_plan_is_seen_nothing_is_started_or_stopped(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    """A restarted agent adopts the engine its predecessor left running; with no plan in Redis (the planner has
    not published yet, or its key expired) it must keep that engine serving, not stop it for an empty plan."""
    gpus = [FakeGpu(0), FakeGpu(1)]
    first = build(tmp_path, redis_url, gpus)
    r.set(KEYS.plan, plan(1, ("a", "SS", [0])).to_json())
    first.tick()
    engine = first.act.instances["a"].engine
    pid = engine.pid
    assert pid is not None and records(r)["a"].state == "ready"
    r.delete(KEYS.plan)  # the first agent dies without cleaning up; the plan is gone too
    # the engine is this test's child: reap it when it exits, as init would for a dead agent's engine
    threading.Thread(target=engine._proc.wait, daemon=True).start()  # type: ignore[attr-defined]
    second = build(tmp_path, redis_url, gpus)
    try:
        assert second.act.adopt() == ["a"]
        for _ in range(3):
            second.tick()
        assert second.plan is None and set(second.act.instances) == {"a"}
        assert second.act.instances["a"].engine.pid == pid and second.act.instances["a"].engine.healthy()
        assert records(r)["a"].state == "ready"
        r.set(KEYS.plan, plan(2).to_json())  # a plan at last, with nothing for this node: now it stops
        second.tick()
        assert second.act.instances == {} and records(r) == {}
    finally:
        second.shutdown()
        engine.terminate()  # already stopped by the second agent: only reaps and forgets it
        engine.close()


def test_heartbeat_and_telemetry_expire_15_s_after_the_last_publish(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    agent = build(tmp_path, redis_url, [FakeGpu(0)])
    try:
        agent.publish()
        for key in (KEYS.heartbeat("n1"), KEYS.telemetry("n1")):
            ttl_ms = r.pttl(key)
            assert 14_000 < ttl_ms <= 15_000, (key, ttl_ms)  # set just now with a 15 s TTL
    finally:
        agent.shutdown()
