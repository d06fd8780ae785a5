"""Draining, through stand-in engines that speak vLLM's and TGI's own ``/metrics``: a request in flight when an
engine is stopped (scale-down, re-placement, agent shutdown) finishes before the engine gets SIGTERM; gateways
get ``drain_notice_s`` to see ``draining`` first; the wait is bounded; restarts back off up to 60 s."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.agent.agent_support import FakeGpu, actuator, standin_command
from tests.support import wait_for
from wattgate.agent.actuator import MAX_BACKOFF_S, Timeouts
from wattgate.agent.engines.base import EngineKind, EngineSpec
from wattgate.agent.engines.options import EngineOptions, make_engine
from wattgate.agent.engines.process import ProcessEngine
from wattgate.agent.reconcile import diff
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import InstanceRecord, InstanceState, PlannedInstance

HOLD_S = 1.5  # how long the stand-in engine takes to answer a completion


def options(tmp: Path, kind: EngineKind, **env: str) -> EngineOptions:
    env = {"STANDIN_REQUEST_S": str(HOLD_S), "STANDIN_EVENTS_FILE": str(tmp / "events.jsonl"), **env}
    return EngineOptions(kind=kind, log_dir=tmp / "logs", command=standin_command(), stop_grace_s=5.0, env=env)


def events(tmp: Path) -> list[tuple[str, float]]:
    path = tmp / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(d["event"], d["t"]) for d in map(json.loads, lines)]


class Call:
    """A completion sent to the engine from a background thread; ``status`` once it is answered or cut."""

    def __init__(self, base_url: str) -> None:
        self.status: int | str | None = None
        self.thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)
        self.thread.start()

    def _run(self, base_url: str) -> None:
        try:
            r = httpx.post(base_url + "/v1/completions", json={"model": "m", "prompt": "x"}, timeout=30)
            self.status = r.status_code
        except httpx.HTTPError as exc:
            self.status = type(exc).__name__

    def result(self) -> int | str | None:
        self.thread.join(timeout=30)
        return self.status


def started(tmp: Path, kind: EngineKind, max_batch: int = 64) -> ProcessEngine:
    spec = EngineSpec("i0", "meta/llama", "SS", 1, (0,), ("GPU-u0",), "127.0.0.1", free_port(), max_batch)
    engine = make_engine(options(tmp, kind), spec)
    assert isinstance(engine, ProcessEngine)
    engine.start()
    wait_for(engine.healthy, "engine healthy", timeout_s=20)
    return engine


@pytest.mark.parametrize("kind", [EngineKind.VLLM, EngineKind.TGI])
def test_stop_lets_a_running_request_finish_before_sigterm(tmp_path: Path, kind: EngineKind) -> None:
    engine = started(tmp_path, kind)
    try:
        call = Call(engine.base_url)
        wait_for(lambda: engine.in_flight() == 1, "the request is running (engine /metrics)")
        t0 = time.monotonic()
        assert engine.drain(0.2) is False  # bounded: gives up while it runs
        engine.stop(drain_timeout_s=20)
        assert time.monotonic() - t0 >= HOLD_S - 0.5
        assert call.result() == 200  # finished, not cut by the SIGTERM
        order = [e for e, _ in events(tmp_path)]
        assert order == ["request-start", "request-end", "sigterm"]
        assert not engine.running()
    finally:
        engine.terminate()
        engine.close()


def test_tgi_in_flight_counts_its_queue_and_its_batch(tmp_path: Path) -> None:
    engine = started(tmp_path, EngineKind.TGI, max_batch=1)  # one runs, the next waits in TGI's queue
    try:
        calls = [Call(engine.base_url) for _ in range(2)]
        wait_for(lambda: engine.in_flight() == 2, "tgi_batch_current_size 1 + tgi_queue_size 1")
        text = httpx.get(engine.base_url + "/metrics").text
        assert "tgi_batch_current_size 1\n" in text and "tgi_queue_size 1\n" in text
        assert engine.drain(20) is True
        assert [c.result() for c in calls] == [200, 200]
        assert engine.in_flight() == 0
    finally:
        engine.terminate()
        engine.close()


def test_vllm_standin_speaks_vllms_shapes(tmp_path: Path) -> None:
    engine = started(tmp_path, EngineKind.VLLM)
    try:
        health = httpx.get(engine.base_url + "/health")
        assert health.status_code == 200 and health.content == b""
        card = httpx.get(engine.base_url + "/v1/models").json()["data"][0]
        assert card["id"] == "meta/llama" and card["owned_by"] == "vllm" and card["root"] == "meta/llama"
        text = httpx.get(engine.base_url + "/metrics").text
        assert 'vllm:num_requests_running{engine="0",model_name="meta/llama"} 0.0' in text
        assert engine.in_flight() == 0
    finally:
        engine.terminate()
        engine.close()


class RecordingStore:
    """The agent's registry writes, stamped with wall-clock time (the stand-in's events are wall-clock too)."""

    def __init__(self) -> None:
        self.puts: list[tuple[float, InstanceRecord]] = []
        self.removed: list[tuple[float, str]] = []

    def put_instance(self, rec: InstanceRecord, announce: bool = True) -> None:
        self.puts.append((time.time(), rec))

    def remove_instance(self, instance_id: str) -> None:
        self.removed.append((time.time(), instance_id))


def test_scale_down_drains_the_request_in_flight_after_the_notice(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    store = RecordingStore()
    timeouts = Timeouts(drain_s=20, drain_notice_s=0.5, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), store=store, timeouts=timeouts)  # type: ignore[arg-type]
    try:
        act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
        engine = act.instances["a"].engine
        call = Call(engine.base_url)
        wait_for(lambda: engine.in_flight() == 1, "the request is running")
        act.apply(diff([], act.actual(), [0]).actions)  # the plan drops the instance
        assert call.result() == 200
        draining = next(t for t, rec in store.puts if rec.state == InstanceState.DRAINING.value)
        got = dict(events(tmp_path))
        # gateways had the notice period to stop sending before anything else happened to the engine,
        # and the request in flight ended before the SIGTERM
        assert got["sigterm"] - draining >= timeouts.drain_notice_s
        assert got["request-end"] < got["sigterm"]
        assert [i for _, i in store.removed] == ["a"] and store.removed[0][0] >= got["sigterm"]
        assert act.instances == {} and gpus[0].locked is None
    finally:
        act.shutdown()


def test_an_idle_engine_still_gets_the_notice_before_it_is_stopped(tmp_path: Path) -> None:
    """Nothing in flight when the plan drops it: the gateways still get ``drain_notice_s`` to stop sending
    (a request routed just before they saw ``draining`` must find the engine up)."""
    gpus = [FakeGpu(0)]
    store = RecordingStore()
    timeouts = Timeouts(drain_s=20, drain_notice_s=0.5, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), store=store, timeouts=timeouts)  # type: ignore[arg-type]
    try:
        act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
        act.apply(diff([], act.actual(), [0]).actions)
        draining = next(t for t, rec in store.puts if rec.state == InstanceState.DRAINING.value)
        assert dict(events(tmp_path))["sigterm"] - draining >= timeouts.drain_notice_s
    finally:
        act.shutdown()


def test_agent_shutdown_drains_managed_engines(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    timeouts = Timeouts(drain_s=20, drain_notice_s=0.05, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), timeouts=timeouts)
    act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
    engine = act.instances["a"].engine
    call = Call(engine.base_url)
    wait_for(lambda: engine.in_flight() == 1, "the request is running")
    act.shutdown()
    assert call.result() == 200
    order = [e for e, _ in events(tmp_path)]
    assert order == ["request-start", "request-end", "sigterm"]
    assert not engine.running()


def test_drain_gives_up_after_its_timeout(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    opts = options(tmp_path, EngineKind.VLLM, STANDIN_REQUEST_S="30")
    timeouts = Timeouts(drain_s=0.5, drain_notice_s=0, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, opts, timeouts=timeouts)
    act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
    engine = act.instances["a"].engine
    call = Call(engine.base_url)
    wait_for(lambda: engine.in_flight() == 1, "the request is running")
    t0 = time.monotonic()
    act.apply(diff([], act.actual(), [0]).actions)
    assert time.monotonic() - t0 < 10  # the 0.5 s drain, then SIGTERM: not the request's 30 s
    assert call.result() != 200  # cut by the stop, as it had to be
    assert not engine.running()


def test_restart_backoff_doubles_up_to_its_cap(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    opts = replace(options(tmp_path, EngineKind.VLLM), command=("/nonexistent/vllm",))
    act = actuator(tmp_path, gpus, opts, timeouts=Timeouts(start_retries=20))  # not given up on within 9 tries
    act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
    r = act.instances["a"]
    waits = []
    for _ in range(9):
        assert r.state is InstanceState.FAILED and r.restart_at is not None
        waits.append(round(r.restart_at - time.monotonic()))  # set just now, at the failed launch
        act.supervise(r.restart_at)  # due: the launch fails again
    assert MAX_BACKOFF_S == 60.0
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_agent_shutdown_gives_the_notice_too(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    store = RecordingStore()
    timeouts = Timeouts(drain_s=20, drain_notice_s=0.5, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), store=store, timeouts=timeouts)  # type: ignore[arg-type]
    act.apply(diff([PlannedInstance("a", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
    act.shutdown()  # nothing in flight: only the notice stands between draining and the SIGTERM
    draining = next(t for t, rec in store.puts if rec.state == InstanceState.DRAINING.value)
    assert dict(events(tmp_path))["sigterm"] - draining >= timeouts.drain_notice_s


def test_every_failed_instance_is_restarted_in_the_same_pass(tmp_path: Path) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    opts = replace(options(tmp_path, EngineKind.VLLM), command=("/nonexistent/vllm",))
    act = actuator(tmp_path, gpus, opts)
    plan = [PlannedInstance(i, "SS", "n1", [g], 1, 1200, 1.0, 1.0) for i, g in (("a", 0), ("b", 1))]
    act.apply(diff(plan, act.actual(), [0, 1]).actions)
    assert {i: r.crashes for i, r in act.instances.items()} == {"a": 1, "b": 1}
    act.supervise(max(r.restart_at or 0 for r in act.instances.values()))  # both are due: both are tried
    assert {i: r.crashes for i, r in act.instances.items()} == {"a": 2, "b": 2}
