"""``wattgate agent`` as a subprocess on the fake NVML library, a real Redis and a stand-in engine:
lock and reset, observe-only without permission, reset after SIGTERM and after SIGKILL + restart,
adoption of an engine that outlived the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.agent.agent_support import fake_nvml_fixture, standin_command  # noqa: F401 (the fake_nvml_dir fixture)
from tests.agent.nvml_support import locked_clocks, nvml_env, write_state
from tests.support import wait_for
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import Heartbeat, InstanceRecord, Keys, Plan, PlannedInstance

KEYS = Keys()


def publish_plan(r: redis.Redis, version: int, clock: int, gpus: list[int]) -> None:
    inst = [PlannedInstance("n1-SS-0", "SS", "n1", gpus, len(gpus), clock, 1.0, 500.0)] if gpus else []
    plan = Plan(version, time.time(), "m", inst, {"SS": 1.0}, 500.0, 1000.0)
    r.set(KEYS.plan, plan.to_json())


class AgentProc:
    def __init__(self, lib: Path, state: Path, tmp: Path, redis_url: str, *extra: str) -> None:
        self.log = tmp / f"agent-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "wattgate", "agent", "--redis-url", redis_url, "--node", "n1"]
        cmd += ["--engine", "vllm", "--model", "m", "--engine-command", " ".join(standin_command())]
        cmd += ["--state-dir", str(tmp / "agent-state"), "--port-base", str(free_port()), "--tick-s", "0.1"]
        cmd += ["--drain-timeout-s", "2", "--stop-grace-s", "2", *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=nvml_env(lib, state), stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def env(fake_nvml_dir: Path, tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, Path, redis.Redis]]:
    state = tmp_path / "nvml-state"
    write_state(state)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield state, tmp_path, r
    r.close()


def record(r: redis.Redis) -> InstanceRecord | None:
    raw = r.hget(KEYS.instances, "n1-SS-0")
    return InstanceRecord.from_json(raw) if raw else None


def heartbeat(r: redis.Redis) -> Heartbeat | None:
    raw = r.get(KEYS.heartbeat("n1"))
    return Heartbeat.from_json(raw) if raw else None


def test_locks_plan_clock_and_resets_on_sigterm(env, fake_nvml_dir: Path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    state, tmp, r = env
    publish_plan(r, 1, 1200, [0, 1])
    metrics_port = free_port()
    agent = AgentProc(fake_nvml_dir, state, tmp, redis_url, "--metrics-port", str(metrics_port))
    try:
        rec = wait_for(lambda: (x := record(r)) is not None and x.ready and x, "instance ready")
        assert isinstance(rec, InstanceRecord) and rec.gpus == [0, 1] and rec.sm_clock_mhz == 1200
        assert locked_clocks(state) == {0: 1200, 1: 1200}
        hb = wait_for(lambda: heartbeat(r), "heartbeat")
        assert isinstance(hb, Heartbeat) and hb.clock_control and hb.plan_version == 1 and hb.gpu_count == 2
        tel = wait_for(
            lambda: (
                (t := json.loads(r.get(KEYS.telemetry("n1")) or "{}")).get("instances") == {"n1-SS-0": "ready"} and t
            ),
            "telemetry with the ready instance",
        )
        assert isinstance(tel, dict)
        assert [g["source"] for g in tel["gpus"]] == ["measured", "measured"]
        assert tel["gpus"][0]["locked_clock_mhz"] == 1200 and tel["gpus"][0]["sm_clock_mhz"] == 1200
        publish_plan(r, 2, 1605, [0, 1])  # same placement, new clock: re-clocked in place (no clock loop)
        wait_for(lambda: locked_clocks(state) == {0: 1605, 1: 1605}, "re-clocked to 1605")
        wait_for(lambda: (x := record(r)) is not None and x.sm_clock_mhz == 1605, "record shows 1605")
        publish_plan(r, 3, 1200, [0, 1])
        wait_for(lambda: locked_clocks(state) == {0: 1200, 1: 1200}, "back to 1200")
        # the metrics are refreshed on the agent's next tick: wait for the re-lock to show there
        metrics = wait_for(
            lambda: (
                (t := httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text)
                and 'wattgate_agent_gpu_locked_clock_mhz{gpu="0"} 1200.0' in t
                and t
            ),
            "metrics show the 1200 MHz lock",
        )
        assert isinstance(metrics, str)
        assert "wattgate_agent_clock_control 1.0" in metrics
        assert 'wattgate_agent_gpu_locked_clock_mhz{gpu="0"} 1200.0' in metrics
        assert 'source="measured"' in metrics
        # a new plan moves the instance to GPU 1 only: drain, stop, re-lock, start; GPU 0 is released.
        # 1400 MHz is not a supported clock (15 MHz steps down from 1980): the next one up is locked.
        publish_plan(r, 4, 1400, [1])
        wait_for(lambda: locked_clocks(state) == {0: 0, 1: 1410}, "GPU 0 reset, GPU 1 at 1410")
        wait_for(lambda: (x := record(r)) is not None and x.ready and x.gpus == [1], "moved instance ready")
    finally:
        rc = agent.stop(signal.SIGTERM)
    assert rc == 0, agent.output()
    assert locked_clocks(state) == {0: 0, 1: 0}
    assert record(r) is None  # drained, stopped and unregistered
    assert "reset locked clocks" in agent.output()


def test_observe_only_without_permission(env, fake_nvml_dir: Path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    state, tmp, r = env
    write_state(state, deny_lock=True)
    publish_plan(r, 1, 1200, [0])
    agent = AgentProc(fake_nvml_dir, state, tmp, redis_url)
    try:
        wait_for(lambda: (x := record(r)) is not None and x.ready, "instance ready despite no clock privilege")
        hb = wait_for(lambda: (h := heartbeat(r)) is not None and not h.clock_control and h, "observe-only heartbeat")
        assert isinstance(hb, Heartbeat) and any("observe-only" in n for n in hb.notes)
        assert locked_clocks(state) == {0: 0, 1: 0}
    finally:
        rc = agent.stop(signal.SIGINT)
    assert rc == 0
    assert agent.output().count("observe-only mode") == 1  # said once


def test_sigkill_then_restart_resets_clocks_and_adopts_engine(env, fake_nvml_dir: Path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    state, tmp, r = env
    publish_plan(r, 1, 1200, [0, 1])
    first = AgentProc(fake_nvml_dir, state, tmp, redis_url)
    wait_for(lambda: (x := record(r)) is not None and x.ready, "instance ready")
    assert locked_clocks(state) == {0: 1200, 1: 1200}
    engines = json.loads((tmp / "agent-state" / "engines.json").read_text())["engines"]
    engine_pid = engines[0]["pid"]
    first.stop(signal.SIGKILL)
    assert locked_clocks(state) == {0: 1200, 1: 1200}  # nobody reset them: the agent died
    os.kill(engine_pid, 0)  # the engine outlived the agent
    # Restart in observe-only mode, so nothing re-locks: the start-up reset is what we see.
    second = AgentProc(fake_nvml_dir, state, tmp, redis_url, "--observe-only")
    try:
        wait_for(lambda: locked_clocks(state) == {0: 0, 1: 0}, "start-up reset of the crashed agent's locks")
        wait_for(lambda: "adopted n1-SS-0" in second.output(), "adoption of the running engine")
        saved = json.loads((tmp / "agent-state" / "engines.json").read_text())["engines"]
        assert [e["pid"] for e in saved] == [engine_pid]  # adopted, not restarted
    finally:
        assert second.stop() == 0
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.kill(engine_pid, 0) is not None, "engine gone", timeout_s=5)
    assert "previous agent left it locked" in second.output()


def test_gpu_indices_limits_the_agent_to_those_gpus(env, fake_nvml_dir: Path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """Four GPUs on the host, ``--gpu-indices 1,3``: the heartbeat counts two, telemetry lists GPUs 1 and 3, an
    instance planned on GPU 1 locks GPU 1 only, and GPUs 0 and 2 are never touched."""
    state, tmp, r = env
    write_state(state, gpus=4)
    publish_plan(r, 1, 1200, [1])
    agent = AgentProc(fake_nvml_dir, state, tmp, redis_url, "--gpu-indices", "1,3")
    try:
        hb = wait_for(lambda: heartbeat(r), "heartbeat")
        assert isinstance(hb, Heartbeat) and hb.gpu_count == 2
        tel = wait_for(lambda: json.loads(r.get(KEYS.telemetry("n1")) or "null"), "telemetry")
        assert [g["index"] for g in tel["gpus"]] == [1, 3]
        wait_for(lambda: (x := record(r)) is not None and x.ready, "instance ready on GPU 1")
        assert locked_clocks(state) == {0: 0, 1: 1200, 2: 0, 3: 0}
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    assert locked_clocks(state) == {0: 0, 1: 0, 2: 0, 3: 0}
