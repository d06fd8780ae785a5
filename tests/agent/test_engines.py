"""Engines and their supervision, with a small stand-in HTTP server as the engine process."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.agent.agent_support import FakeGpu, actuator, standin_command
from wattgate.agent.actuator import Timeouts
from wattgate.agent.engines.base import IN_FLIGHT_METRICS, EngineKind, EngineSpec, parse_metrics
from wattgate.agent.engines.options import EngineOptions, make_engine
from wattgate.agent.engines.process import ProcessEngine
from wattgate.agent.reconcile import diff
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import InstanceState, PlannedInstance


def spec(gpus: tuple[int, ...] = (0, 1)) -> EngineSpec:
    uuids = tuple(f"GPU-u{g}" for g in gpus)
    return EngineSpec("i0", "meta/llama", "SS", len(gpus), gpus, uuids, "127.0.0.1", free_port(), 64)


def options(tmp: Path, kind: EngineKind, **kw) -> EngineOptions:  # type: ignore[no-untyped-def]
    return EngineOptions(kind=kind, log_dir=tmp / "logs", command=standin_command(), stop_grace_s=2.0, **kw)


def wait_healthy(engine: ProcessEngine, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not engine.healthy():
        assert engine.running(), "engine exited"
        assert time.monotonic() < deadline, "engine not healthy"
        time.sleep(0.05)


def launched(tmp: Path, kind: EngineKind, **kw) -> dict:  # type: ignore[no-untyped-def]
    argv_file = tmp / "argv.json"
    engine = make_engine(options(tmp, kind, env={"STANDIN_ARGV_FILE": str(argv_file)}, **kw), spec())
    assert isinstance(engine, ProcessEngine)
    engine.start()
    try:
        wait_healthy(engine)
        return json.loads(argv_file.read_text())
    finally:
        engine.stop(0)
        engine.close()


def test_vllm_command_line_gpus_and_sleep_mode(tmp_path: Path) -> None:
    out = launched(tmp_path, EngineKind.VLLM, sleep_mode=True)
    argv = out["argv"]
    assert argv[0] == "meta/llama"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--max-num-seqs") + 1] == "64"
    assert "--enable-sleep-mode" in argv
    assert out["cuda"] == "GPU-u0,GPU-u1"


def test_tgi_command_line(tmp_path: Path) -> None:
    out = launched(tmp_path, EngineKind.TGI, cuda_devices_by="index")
    argv = out["argv"]
    assert argv[argv.index("--model-id") + 1] == "meta/llama"
    assert argv[argv.index("--num-shard") + 1] == "2"
    assert out["cuda"] == "0,1"


def test_simulated_command_line(tmp_path: Path) -> None:
    out = launched(
        tmp_path, EngineKind.SIMULATED, gpu_state_dir=tmp_path / "gs", speed=4.0, extra_args=("--arch", "llama-3.1-8b")
    )
    argv = out["argv"]
    flags = {argv[i]: argv[i + 1] for i in range(0, len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--model"] == "meta/llama" and flags["--arch"] == "llama-3.1-8b"
    assert flags["--tp"] == "2" and flags["--gpus"] == "0,1" and flags["--gpu-state-dir"] == str(tmp_path / "gs")
    assert flags["--speed"] == "4" and flags["--max-num-seqs"] == "64"
    assert "--profile" not in flags  # sim-backend runs the serving model, not a profile
    assert "--enable-sleep-mode" not in argv
    slept = launched(tmp_path, EngineKind.SIMULATED, gpu_state_dir=tmp_path / "gs", sleep_mode=True)
    assert "--enable-sleep-mode" in slept["argv"]


def test_parse_metrics() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{model_name="a"} 3.0\n'
        'vllm:num_requests_running{model_name="b"} 2.0\n'
        "vllm:num_requests_waiting 4 1700000000\n"
        "vllm:num_requests_running_total 99\n"
    )
    assert parse_metrics(text, ("vllm:num_requests_running", "vllm:num_requests_waiting")) == 9.0
    assert parse_metrics(text, ("tgi_queue_size",)) is None


def test_stop_waits_for_in_flight_requests(tmp_path: Path) -> None:
    flight = tmp_path / "in_flight"
    flight.write_text("2")
    engine = make_engine(options(tmp_path, EngineKind.VLLM, env={"STANDIN_IN_FLIGHT_FILE": str(flight)}), spec())
    assert isinstance(engine, ProcessEngine)
    engine.start()
    wait_healthy(engine)
    assert engine.in_flight() == 2
    assert engine.drain(0.3) is False  # bounded: gives up while requests remain
    threading.Timer(0.3, lambda: flight.write_text("0")).start()
    engine.stop(drain_timeout_s=20)
    assert not engine.running()
    engine.close()


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    opts = replace(options(tmp_path, EngineKind.VLLM, env={"STANDIN_IGNORE_SIGTERM": "1"}), stop_grace_s=0.5)
    engine = make_engine(opts, spec())
    assert isinstance(engine, ProcessEngine)
    engine.start()
    wait_healthy(engine)
    pid = engine.pid
    assert pid is not None
    engine.stop(0)
    assert not engine.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    engine.close()


def test_crashed_engine_is_restarted_with_backoff(tmp_path: Path) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    timeouts = Timeouts(drain_s=1, drain_notice_s=0, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), timeouts=timeouts)
    plan = [PlannedInstance("i0", "SS", "n1", [0], 1, 1200, 1.0, 1.0)]
    act.apply(diff(plan, act.actual(), [0, 1]).actions)
    r = act.instances["i0"]
    assert r.state is InstanceState.READY and gpus[0].locked == 1200
    first_pid = r.engine.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while r.engine.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    act.supervise(t0)
    assert r.state is InstanceState.FAILED and r.crashes == 1 and r.restart_at == pytest.approx(t0 + 1.0)
    act.supervise(t0 + 0.5)  # still backing off
    assert r.state is InstanceState.FAILED
    act.supervise(t0 + 1.01)
    assert r.state is InstanceState.READY and r.engine.pid not in (None, first_pid)
    os.kill(r.engine.pid or 0, signal.SIGKILL)
    while r.engine.running():
        time.sleep(0.02)
    act.supervise(t0 + 2)
    assert r.crashes == 2 and r.restart_at == pytest.approx(t0 + 2 + 2.0)  # doubled
    act.shutdown()
    assert act.instances == {}


def test_engine_that_cannot_launch_fails_with_backoff(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    opts = replace(options(tmp_path, EngineKind.VLLM), command=("/nonexistent/vllm",))
    act = actuator(tmp_path, gpus, opts)
    plan = [PlannedInstance("i0", "SS", "n1", [0], 1, 1200, 1.0, 1.0)]
    act.apply(diff(plan, act.actual(), [0]).actions)
    r = act.instances["i0"]
    assert r.state is InstanceState.FAILED and r.crashes == 1 and "cannot run" in r.history[0]
    assert diff(plan, act.actual(), [0]).actions == ()  # no new start every tick: supervise retries it


def test_engine_never_healthy_times_out_is_stopped_and_failed(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    opts = options(tmp_path, EngineKind.VLLM, env={"STANDIN_UNHEALTHY": "1"})
    act = actuator(tmp_path, gpus, opts, timeouts=Timeouts(start_s=1.0, poll_s=0.05))
    act.apply(diff([PlannedInstance("i0", "SS", "n1", [0], 1, 1200, 1.0, 1.0)], act.actual(), [0]).actions)
    r = act.instances["i0"]
    assert r.state is InstanceState.FAILED and "not healthy after" in r.history[0]
    assert not r.engine.running()  # SIGTERM'd, not left half-started
    act.shutdown()


def test_llama_cpp_command_line(tmp_path: Path) -> None:
    out = launched(tmp_path, EngineKind.LLAMA_CPP, model_file=Path("/models/smol.gguf"), extra_args=("-c", "2048"))
    argv = out["argv"]
    flags = {argv[i]: argv[i + 1] for i in range(0, len(argv) - 1) if argv[i].startswith("-")}
    assert flags["--model"] == "/models/smol.gguf" and flags["--alias"] == "meta/llama"
    assert flags["--parallel"] == "64" and flags["--port"] and flags["-c"] == "2048"
    assert "--metrics" in argv  # the in-flight gauges a drain waits on
    text = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nllamacpp:n_decode_total 9\n"
    assert parse_metrics(text, IN_FLIGHT_METRICS[EngineKind.LLAMA_CPP]) == 3


def test_a_start_that_keeps_failing_says_why_and_gives_up(tmp_path: Path) -> None:
    gpus = [FakeGpu(0)]
    why = "gguf_init_from_file: failed to open GGUF file '/nope.gguf' (No such file or directory)"
    opts = options(tmp_path, EngineKind.LLAMA_CPP, model_file=Path("/nope.gguf"), env={"STANDIN_FAIL_START": why})
    timeouts = Timeouts(drain_s=1, drain_notice_s=0, start_s=20, poll_s=0.05, start_retries=3)
    act = actuator(tmp_path, gpus, opts, timeouts=timeouts)
    plan = [PlannedInstance("i0", "SS", "n1", [0], 1, 1200, 1.0, 1.0)]
    act.apply(diff(plan, act.actual(), [0]).actions)
    r = act.instances["i0"]
    assert r.state is InstanceState.FAILED and r.failed_starts == 1
    assert "exit status 1" in r.history[0] and "failed to open GGUF file '/nope.gguf'" in r.history[0]
    t0 = time.monotonic()
    assert act.notes(t0)[0].startswith("instance i0 failed: i0 exited while starting (exit status 1: ")
    assert act.notes(t0)[0].endswith("; restart in 1 s")
    t1 = time.monotonic()
    act.supervise(t0 + 1.01)  # the second start fails too: backoff doubles (counted from the real failure)
    assert r.failed_starts == 2 and r.restart_at is not None and r.restart_at >= t1 + 2.0
    act.supervise(r.restart_at + 0.01)  # the third: the agent gives up instead of looping
    assert r.failed_starts == 3 and r.restart_at is None and r.state is InstanceState.FAILED
    for later in (60, 600, 6000):
        act.supervise(t0 + later)
    log = (tmp_path / "logs" / "i0.log").read_text()
    assert log.count("loading model") == 3  # three launches, no more
    assert "gave up after 3 failed starts" in act.notes(time.monotonic())[0]
    assert diff(plan, act.actual(), [0]).actions == ()  # nor does reconcile start it again
    act.shutdown()


def test_a_crashed_engine_whose_port_was_taken_restarts_on_another(tmp_path: Path) -> None:
    """Another process (say another agent's engine starting on this host) binds the port while the engine is down:
    the restart moves to a free port instead of failing on the taken one until the agent gives up."""
    gpus = [FakeGpu(0)]
    timeouts = Timeouts(drain_s=1, drain_notice_s=0, start_s=20, poll_s=0.05)
    act = actuator(tmp_path, gpus, options(tmp_path, EngineKind.VLLM), timeouts=timeouts)
    plan = [PlannedInstance("i0", "SS", "n1", [0], 1, 1200, 1.0, 1.0)]
    act.apply(diff(plan, act.actual(), [0]).actions)
    r = act.instances["i0"]
    assert r.state is InstanceState.READY
    old_port = r.engine.spec.port
    os.kill(r.engine.pid or 0, signal.SIGKILL)
    while r.engine.running():
        time.sleep(0.02)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        t0 = time.monotonic()
        act.supervise(t0)
        assert r.state is InstanceState.FAILED
        act.supervise(t0 + 1.01)
        assert r.state is InstanceState.READY and r.engine.spec.port != old_port
        assert r.engine.healthy() and r.failed_starts == 0
    act.shutdown()
