"""Warm standby through the agent: plans mark instances standby and active, the agent drains and puts vLLM
(the fake in ``fake_vllm.py``, launched as ``vllm serve`` would be) to sleep and wakes it, a real gateway on
a real Redis routes around sleeping instances; restarts, failed wake-ups and failed sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.agent.agent_support import FakeGpu, actuator, fake_vllm_command
from tests.support import UvicornThread, wait_for
from wattgate.agent.actuator import Timeouts
from wattgate.agent.agent import Agent
from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.options import EngineOptions
from wattgate.agent.metrics import AgentMetrics
from wattgate.agent.store import AgentStore
from wattgate.agent.telemetry import Telemetry
from wattgate.embedded_redis import free_port
from wattgate.gateway.app import create_app
from wattgate.gateway.frontdoor import server_options
from wattgate.gateway.settings import GatewaySettings
from wattgate.planner.contract import Heartbeat, InstanceRecord, Keys, NodeTelemetry, Plan, PlannedInstance

KEYS = Keys()
LOWEST_MHZ = 800  # FakeGpu's lowest supported clock


def inst(iid: str, gpu: int, *, standby: bool = False, clock: int = 1400) -> PlannedInstance:
    return PlannedInstance(iid, "SS", "n1", [gpu], 1, clock, 0.0 if standby else 1.0, 300.0, standby=standby)


def publish(r: redis.Redis, version: int, *instances: PlannedInstance) -> None:
    r.set(KEYS.plan, Plan(version, time.time(), "m", list(instances), {}, 0.0, 0.0).to_json())


def build(tmp: Path, url: str, gpus: list[FakeGpu], *, sleep_mode: bool = True, **env: str) -> Agent:
    """An agent on node ``n1`` running fake vLLM servers (serving ``m``), state in ``tmp`` (a second call on
    the same ``tmp`` is the same node's agent after a restart: it adopts what the first one left)."""
    clocks = ClockController(gpus, tmp / "locks.json")
    clocks.recover()
    store = AgentStore(url, KEYS, timeout_s=0.5)
    opts = EngineOptions(
        kind=EngineKind.VLLM,
        log_dir=tmp / "logs",
        command=fake_vllm_command(),
        stop_grace_s=5,
        sleep_mode=sleep_mode,
        env={"FAKE_VLLM_EVENTS": str(tmp / "events.jsonl"), **env},
    )
    timeouts = Timeouts(drain_s=20, drain_notice_s=0.3, start_s=30, poll_s=0.05, sleep_s=10)
    act = actuator(tmp, gpus, opts, clocks=clocks, store=store, timeouts=timeouts)
    act.sleep_mode = sleep_mode
    act.adopt()
    telemetry = Telemetry("n1", gpus, clocks, act)
    return Agent(node="n1", actuator=act, clocks=clocks, store=store, telemetry=telemetry, metrics=AgentMetrics())


def events(tmp: Path, kind: str) -> list[dict[str, Any]]:
    path = tmp / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def records(r: redis.Redis) -> dict[str, InstanceRecord]:
    return {k: InstanceRecord.from_json(v) for k, v in r.hgetall(KEYS.instances).items()}


def served_ready(r: redis.Redis) -> set[str]:
    return {k for k, v in records(r).items() if v.ready}


def heartbeat_of(r: redis.Redis) -> Heartbeat:
    return Heartbeat.from_json(r.get(KEYS.heartbeat("n1")) or "")


def watch(r: redis.Redis, seen: list[str]) -> threading.Thread:
    """Collect ``id:state`` of every instance record change announced, until ``seen`` gets ``"stop"``."""
    ps = r.pubsub()
    ps.subscribe(KEYS.instance_events)
    ps.get_message(timeout=1)

    def run() -> None:
        while "stop" not in seen:
            m = ps.get_message(timeout=0.1)
            if m is not None and m["type"] == "message":
                raw = r.hget(KEYS.instances, m["data"])
                seen.append(f"{m['data']}:{InstanceRecord.from_json(raw).state if raw else 'gone'}")
        ps.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def heartbeat(agent: Agent, r: redis.Redis) -> Heartbeat:
    agent.publish()
    return Heartbeat.from_json(r.get(KEYS.heartbeat("n1")) or "")


def is_sleeping(agent: Agent, iid: str) -> bool:
    return bool(httpx.get(agent.act.instances[iid].engine.base_url + "/is_sleeping").json()["is_sleeping"])


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def stream_directly(base_url: str, tokens: int, out: list[str]) -> threading.Thread:
    """A streamed completion sent straight to an engine (not through the gateway); its finish reason goes to ``out``."""

    def run() -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
        reason = None
        for chunk in client.completions.create(model="m", prompt="hello", max_tokens=tokens, stream=True):
            reason = chunk.choices[0].finish_reason if chunk.choices else reason
        out.append(str(reason))
        client.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_standby_drains_sleeps_is_not_routed_and_wakes_routed_again(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    agent = build(tmp_path, redis_url, gpus, FAKE_VLLM_TOKEN_S="0.05")
    app = create_app(GatewaySettings(redis_url=redis_url, classifier="max_tokens", registry_refresh_s=30))
    with UvicornThread(app, **server_options(app.front_door)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)

        def one(_: int) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            return str(raw.headers["x-wattgate-instance"])

        def served_by() -> set[str]:
            """Which instances six requests sent at once reach (one alone always takes the first idle)."""
            with ThreadPoolExecutor(6) as pool:
                return set(pool.map(one, range(6)))

        def routes_to(ids: set[str]) -> bool:
            """``served_by() == ids``; False while the gateway has not applied the registry events yet (it
            answers 503 no_capacity until it sees a ready instance, which a loaded machine delays)."""
            try:
                return served_by() == ids
            except openai.InternalServerError as exc:
                if exc.status_code != 503 or "no_capacity" not in str(exc.body):
                    raise
                return False

        try:
            publish(r, 1, inst("a", 0), inst("b", 1))
            agent.tick()
            assert {k: v.state for k, v in records(r).items()} == {"a": "ready", "b": "ready"}
            wait_for(lambda: routes_to({"a", "b"}), "the gateway to route to both")
            b = agent.act.instances["b"].engine
            pid = b.pid

            # in flight on b when the plan puts it on standby: they finish, then b sleeps
            finished: list[str] = []
            streams = [stream_directly(b.base_url, 30, finished) for _ in range(2)]
            wait_for(lambda: b.in_flight() == 2, "two requests in flight on b")
            publish(r, 2, inst("a", 0), inst("b", 1, standby=True))
            agent.tick()
            for t in streams:
                t.join(timeout=30)
            assert finished == ["length", "length"]  # none aborted by the sleep
            (slept,) = events(tmp_path, "sleep")
            assert slept["level"] == 1 and slept["aborted"] == 0
            assert max(e["t"] for e in events(tmp_path, "request")) <= slept["t"]
            assert records(r)["b"].state == "asleep" and is_sleeping(agent, "b") and b.pid == pid
            assert gpus[1].locked == LOWEST_MHZ and records(r)["b"].sm_clock_mhz == LOWEST_MHZ
            hb = heartbeat(agent, r)
            assert hb.asleep == ["b"] and hb.sleep_mode and hb.notes == []
            tel = NodeTelemetry.from_json(r.get(KEYS.telemetry("n1")) or "")
            assert tel.instances == {"a": "ready", "b": "asleep"}
            assert agent.metrics is not None and 'wattgate_agent_instances{state="asleep"} 1.0' in agent.metrics.text()

            # asleep: the gateway sends it nothing, and forwards no sleep or wake-up of its clients
            before = len(events(tmp_path, "request"))
            assert httpx.post(gw.url + "/wake_up").status_code in (404, 405) and is_sleeping(agent, "b")
            assert served_by() | served_by() == {"a"}
            assert not any(e["arrived_asleep"] for e in events(tmp_path, "request")[before:])

            # active again: woken in place (same process, no weight reload), at the plan's clock, routed again
            publish(r, 3, inst("a", 0), inst("b", 1, clock=1600))
            agent.tick()
            assert records(r)["b"].state == "ready" and not is_sleeping(agent, "b")
            assert agent.act.instances["b"].engine.pid == pid and [e["ok"] for e in events(tmp_path, "wake")] == [True]
            assert gpus[1].locked == 1600
            wait_for(lambda: routes_to({"a", "b"}), "the gateway to route to b again")
            assert heartbeat(agent, r).asleep == []
        finally:
            client.close()
            agent.shutdown()
    assert records(r) == {} and [g.locked for g in gpus] == [None, None]


def saved_engine(tmp: Path) -> dict[str, Any]:
    (entry,) = json.loads((tmp / "agent-state" / "engines.json").read_text())["engines"]
    return dict(entry)


class AgentProc:
    """``wattgate agent`` as a process on one simulated GPU, running fake vLLM servers with sleep mode."""

    def __init__(self, tmp: Path, redis_url: str, port_base: int) -> None:
        self.log = tmp / f"agent-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "wattgate", "agent", "--redis-url", redis_url, "--node", "n1", "--gpus", "sim:1"]
        cmd += ["--engine", "vllm", "--model", "m", "--engine-command", " ".join(fake_vllm_command()), "--sleep-mode"]
        cmd += ["--state-dir", str(tmp / "agent-state"), "--port-base", str(port_base), "--tick-s", "0.1"]
        env = {**os.environ, "FAKE_VLLM_EVENTS": str(tmp / "events.jsonl")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def test_a_restarted_agent_adopts_an_asleep_instance_and_can_wake_it(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    port = free_port()
    publish(r, 1, inst("s", 0, standby=True))
    first = AgentProc(tmp_path, redis_url, port)
    try:
        # a new standby instance: started, then asleep, never registered ready
        wait_for(lambda: (x := records(r).get("s")) is not None and x.state == "asleep", "s asleep", timeout_s=60)
        saved = wait_for(lambda: (e := saved_engine(tmp_path)) and e["asleep"] and e, "engines.json to say asleep")
        assert len(events(tmp_path, "sleep")) == 1
        lowest = records(r)["s"].sm_clock_mhz
    finally:
        first.stop(signal.SIGKILL)  # the agent dies: its engine sleeps on, its clock stays locked
    os.kill(saved["pid"], 0)
    r.delete(KEYS.heartbeat("n1"))  # the dead agent's last one: the heartbeats below are the new agent's
    second = AgentProc(tmp_path, redis_url, port)
    try:
        wait_for(lambda: f"adopted s (pid {saved['pid']}, asleep)" in second.output(), "adoption asleep", timeout_s=60)
        wait_for(lambda: (h := r.get(KEYS.heartbeat("n1"))) and Heartbeat.from_json(h).plan_version == 1, "plan read")
        assert heartbeat_of(r).asleep == ["s"] and heartbeat_of(r).sleep_mode
        assert records(r)["s"].state == "asleep" and records(r)["s"].sm_clock_mhz == lowest  # re-locked low
        time.sleep(1)  # ten more control passes under the same plan: nothing to do
        assert events(tmp_path, "wake") == [] and len(events(tmp_path, "sleep")) == 1
        publish(r, 2, inst("s", 0))
        wait_for(lambda: records(r)["s"].state == "ready", "s woken and ready", timeout_s=60)
        again = wait_for(lambda: (e := saved_engine(tmp_path)) and not e["asleep"] and e, "engines.json to say awake")
        assert again["pid"] == saved["pid"] and len(events(tmp_path, "wake")) == 1
    finally:
        assert second.stop() == 0
    assert records(r) == {}
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.kill(saved["pid"], 0) is not None, "engine gone", timeout_s=10)


def test_a_wake_up_that_fails_is_reported_and_restarts_the_engine_cold(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    gpus = [FakeGpu(0)]
    agent = build(tmp_path, redis_url, gpus, FAKE_VLLM_WAKE_FAIL="1")
    try:
        publish(r, 1, inst("s", 0, standby=True))
        seen: list[str] = []
        watcher = watch(r, seen)
        agent.tick()  # a new standby instance: started, then asleep, never registered ready
        wait_for(lambda: "s:asleep" in seen, "the asleep record announced")
        seen.append("stop")
        watcher.join(timeout=10)
        assert seen[:-1] == ["s:starting", "s:asleep"]
        old = agent.act.instances["s"].engine
        old_pid = old.pid
        publish(r, 2, inst("s", 0))
        agent.tick()
        assert records(r)["s"].state == "failed" and not old.running()
        (note,) = heartbeat(agent, r).notes
        assert note.startswith("instance s failed: wake_up failed, restarting cold: s: POST /wake_up answered HTTP 500")
        agent.act.supervise(time.monotonic() + 5)  # past the first back-off
        s = agent.act.instances["s"]
        assert s.state.value == "ready" and s.engine.pid not in (None, old_pid) and records(r)["s"].state == "ready"
        (note,) = heartbeat(agent, r).notes
        assert "s: wake_up failed" in note and "HTTP 500" in note and note.endswith("restarted cold")
    finally:
        agent.shutdown()


def test_a_sleep_that_fails_stops_the_engine_and_turns_sleeping_off(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    agent = build(tmp_path, redis_url, gpus, FAKE_VLLM_SLEEP_FAIL="1")
    try:
        publish(r, 1, inst("a", 0), inst("b", 1))
        agent.tick()
        publish(r, 2, inst("a", 0, standby=True), inst("b", 1, standby=True))
        agent.tick()
        assert set(agent.act.instances) == set() and records(r) == {}  # the first failure stops both
        agent.tick()  # kept stopped: nothing is started again (no start-and-fail loop)
        assert agent.act.instances == {} and gpus[0].locked is None and len(events(tmp_path, "sleep")) == 0
        hb = heartbeat(agent, r)
        assert not hb.sleep_mode and hb.asleep == []
        off = "sleep mode off since a sleep failed (a: POST /sleep?level=1 answered HTTP 500: Internal Server Error)"
        assert any(n.startswith(off) for n in hb.notes)
        assert sorted(n[:2] for n in hb.notes if "planned on standby" in n) == ["a:", "b:"]
        publish(r, 3, inst("a", 0), inst("b", 1, standby=True))
        agent.tick()  # active again: a cold start
        assert {k: v.state for k, v in records(r).items()} == {"a": "ready"}
    finally:
        agent.shutdown()


def test_standby_on_a_node_without_sleep_mode_is_kept_stopped(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    gpus = [FakeGpu(0)]
    agent = build(tmp_path, redis_url, gpus, sleep_mode=False)
    try:
        publish(r, 1, inst("s", 0, standby=True))
        agent.tick()
        assert agent.act.instances == {} and records(r) == {}
        hb = heartbeat(agent, r)
        assert not hb.sleep_mode and hb.notes[0].startswith("s: planned on standby") and "--sleep-mode" in hb.notes[0]
    finally:
        agent.shutdown()


def test_exit_stops_an_asleep_instance_and_releases_its_clock(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    gpus = [FakeGpu(0)]
    agent = build(tmp_path, redis_url, gpus)
    try:
        publish(r, 1, inst("s", 0, standby=True))
        agent.tick()
        pid = agent.act.instances["s"].engine.pid
        assert pid is not None and records(r)["s"].state == "asleep" and gpus[0].locked == LOWEST_MHZ
    finally:
        agent.shutdown()
    assert gpus[0].locked is None and records(r) == {}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert json.loads((tmp_path / "engines.json").read_text()) == {"engines": []}
