"""End to end on loopback: a real Redis, ``wattgate agent`` on simulated GPUs and engines, ``wattgate
gateway`` and (in one variant) ``wattgate planner``, all as processes. The load changes while the
official ``openai`` client sends requests through the gateway; instances start, drain and stop, clocks
move, and every request gets a 200. On SIGTERM the agent resets the clocks it locked."""

from __future__ import annotations

import contextlib
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

import httpx
import openai
import pytest
import redis

from tests.support import wait_for, wait_port
from wattgate.agent.clock_policy import ClockInput, choose_clock
from wattgate.agent.gpu.simulated import H100_SM_CLOCKS_MHZ
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import InstanceRecord, Keys, NodeTelemetry, Plan, PlannedInstance
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import SloTargets

pytestmark = pytest.mark.slow

KEYS = Keys()
MODEL = "llama-sim"
NODE = "n1"


class Procs:
    """Subprocesses of one test, each logging to a file; all of them are stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "wattgate", *args]
        with open(self.tmp / f"{name}.log", "wb") as out:
            env = {**os.environ, "PYTHONPATH": os.getcwd()}
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(f"{name} did not exit within {timeout_s} s of signal {sig}") from None

    def kill_all(self) -> None:
        """Teardown: SIGTERM what still runs, then SIGKILL its whole process group (engines included)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
            proc.wait(timeout=10)
        # engines run in their own process groups: kill any an agent that died left behind
        engines = self.tmp / "agent-state" / "engines.json"
        if engines.exists():
            for engine in json.loads(engines.read_text()).get("engines", []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(engine["pid"]), signal.SIGKILL)


class Load:
    """Requests through the gateway with the openai client from a background thread at a set rate."""

    def __init__(self, base_url: str) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=30)
        self.rate = 0.0
        self.max_tokens = 8
        self.results: list[str] = []  # "200" or the error
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def set(self, rate: float, max_tokens: int) -> None:
        self.rate, self.max_tokens = rate, max_tokens

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.pool.shutdown(wait=True)
        self.client.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            if self.rate <= 0:
                self.stopped.wait(0.05)
                next_at = time.monotonic()
                continue
            self.pool.submit(self._one, self.max_tokens)
            next_at += 1.0 / self.rate
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def _one(self, max_tokens: int) -> None:
        try:
            resp = self.client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=max_tokens
            )
            resp.parse()
            outcome = str(resp.status_code)
        except Exception as exc:  # every failure is recorded and fails the test
            outcome = f"at {time.strftime('%H:%M:%S')}: {type(exc).__name__}: {exc}"
        with self.lock:
            self.results.append(outcome)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def failures(self) -> list[str]:
        with self.lock:
            return [r for r in self.results if r != "200"]


class Registry:
    """Watches the instance registry (pub/sub events plus polling) and keeps every state each instance had."""

    def __init__(self, url: str, gpu_dir: Path | None = None, gpus: int = 0) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.seen: dict[str, list[str]] = {}
        self.gpu_dir, self.gpus = gpu_dir, gpus
        self.clocks: dict[int, list[int | None]] = {}  # every locked clock each simulated GPU had
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Registry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.r.close()

    def _run(self) -> None:
        sub = self.r.pubsub()  # type: ignore[no-untyped-call]
        sub.subscribe(KEYS.instance_events)
        try:
            while not self.stopped.is_set():
                sub.get_message(timeout=0.02)
                self._note(self.current())
                if self.gpu_dir is not None:
                    self._note_clocks(locked_clocks(self.gpu_dir, self.gpus))
        finally:
            sub.close()

    def _note(self, now: dict[str, InstanceRecord]) -> None:
        with self.lock:
            for known in self.seen:
                if known not in now and self.seen[known][-1] != "gone":
                    self.seen[known].append("gone")
            for rec in now.values():
                states = self.seen.setdefault(rec.id, [])
                if not states or states[-1] != rec.state:
                    states.append(rec.state)

    def _note_clocks(self, now: dict[int, int | None]) -> None:
        with self.lock:
            for gpu, mhz in now.items():
                history = self.clocks.setdefault(gpu, [])
                if not history or history[-1] != mhz:
                    history.append(mhz)

    def clock_history(self) -> dict[int, list[int | None]]:
        with self.lock:
            return {g: list(h) for g, h in self.clocks.items()}

    def current(self) -> dict[str, InstanceRecord]:
        raw = self.r.hgetall(KEYS.instances)
        return {str(k): InstanceRecord.from_json(v) for k, v in raw.items()}

    def states(self, instance_id: str) -> list[str]:
        with self.lock:
            return list(self.seen.get(instance_id, []))

    def ready(self) -> dict[str, InstanceRecord]:
        return {k: v for k, v in self.current().items() if v.ready}


def locked_clocks(gpu_dir: Path, count: int) -> dict[int, int | None]:
    """What the simulated GPUs' control files say is locked (None: reset)."""
    out: dict[int, int | None] = {}
    for i in range(count):
        path = gpu_dir / f"gpu{i}.control.json"
        out[i] = json.loads(path.read_text())["locked_sm_clock_mhz"] if path.exists() else None
    return out


def telemetry(r: redis.Redis) -> NodeTelemetry | None:
    raw = r.get(KEYS.telemetry(NODE))
    return NodeTelemetry.from_json(raw) if raw else None


def publish(r: redis.Redis, instances: list[PlannedInstance]) -> int:
    """Publish a plan the way the planner does: INCR plan:seq + SET plan + PUBLISH plan:events."""
    version = int(r.incr(KEYS.plan_seq))
    load = {p.pool: p.load_rps for p in instances}
    plan = Plan(version, time.time(), MODEL, instances, load, 1000.0, 2000.0)
    r.set(KEYS.plan, plan.to_json())
    r.publish(KEYS.plan_events, str(version))
    return version


class Cluster:
    """Agent (sim GPUs + sim engines) and gateway processes on one Redis."""

    def __init__(self, procs: Procs, tmp: Path, redis_url: str, gpus: int, *agent_extra: str) -> None:
        self.procs, self.redis_url, self.gpus = procs, redis_url, gpus
        self.gpu_dir = tmp / "sim-gpus"
        self.gw_port = free_port()
        agent = ["agent", "--redis-url", redis_url, "--node", NODE, "--gpus", f"sim:{gpus}", "--engine", "sim"]
        agent += ["--model", MODEL, "--gpu-state-dir", str(self.gpu_dir), "--state-dir", str(tmp / "agent-state")]
        agent += ["--tick-s", "0.2", "--clock-interval-s", "1", "--port-base", str(free_port()), "--sim-speed", "20"]
        agent += ["--drain-timeout-s", "15", "--stop-grace-s", "5", "--start-timeout-s", "40", "--load-window-s", "3"]
        agent += agent_extra
        procs.start("agent", *agent)
        gw = ["gateway", "--redis-url", redis_url, "--port", str(self.gw_port), "--log-level", "warning"]
        procs.start("gateway", *gw, "--health-interval-s", "1")
        wait_port(self.gw_port, timeout_s=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gw_port}/v1"

    def gateway_routable(self) -> int:
        """Registry instances the gateway itself can route to now (its ``wattgate_gateway_instances`` gauge):
        Redis may list an instance ready a moment before the gateway has applied the event."""
        text = httpx.get(f"http://127.0.0.1:{self.gw_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("wattgate_gateway_instances{") and 'routable="true"' in line and "registry" in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def stop_agent_and_check_reset(self) -> None:
        """SIGTERM: the agent drains and stops its engines, unregisters them, resets every clock it locked."""
        rc = self.procs.stop("agent", signal.SIGTERM, timeout_s=40)
        log = self.procs.log("agent")
        assert rc == 0, log
        assert locked_clocks(self.gpu_dir, self.gpus) == dict.fromkeys(range(self.gpus)), log
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            assert r.hgetall(KEYS.instances) == {}
        finally:
            r.close()
        assert "Traceback" not in log, log


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


def test_published_plans_start_drain_stop_and_reclock_without_failing_requests(
    procs: Procs, tmp_path: Path, redis_url: str
) -> None:
    """Plans published as the planner publishes them: move the SS pool to other GPUs at another clock."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    first = PlannedInstance(f"{NODE}-SS-a", "SS", NODE, [0, 1], 2, 1980, 1.0, 600.0)
    publish(r, [first])
    cluster = Cluster(procs, tmp_path, redis_url, 4)
    with Registry(redis_url) as reg, Load(cluster.base_url) as load:
        wait_for(lambda: first.id in reg.ready(), "the first instance ready", 40)
        # the clock loop: idle, the lowest clock a lone SS request meets its target at, whatever the plan said
        idle = idle_clock("SS", 2)
        assert idle <= 1000  # far below the plan's 1980 MHz: a lone short request meets its target at a low clock
        wait_for(lambda: locked_clocks(cluster.gpu_dir, 4) == {0: idle, 1: idle, 2: None, 3: None}, "idle clocks")
        load.set(1.0, 8)
        wait_for(lambda: load.count() >= 4, "requests served by the first instance")
        # the load rises: the clock loop raises the clock to meet the SLO at the higher load
        load.set(4.0, 8)
        wait_for(lambda: (locked_clocks(cluster.gpu_dir, 4)[0] or 0) > 1000, "a higher clock under load", 30)
        tel = wait_for(
            lambda: (t := telemetry(r)) is not None and (t.gpus[0].locked_clock_mhz or 0) > 1000 and t,
            "telemetry with the higher clock",
        )
        assert tel.instances == {first.id: "ready"} and all(g.source == "modelled" for g in tel.gpus)
        # the plan moves the SS pool to GPUs 2,3 (a new instance; the old one drains and stops)
        second = PlannedInstance(f"{NODE}-SS-b", "SS", NODE, [2, 3], 2, 1980, 4.0, 900.0)
        publish(r, [second])
        wait_for(lambda: second.id in reg.ready(), "the second instance ready", 40)
        wait_for(lambda: reg.states(first.id)[-1:] == ["gone"], "the first instance drained and stopped", 30)
        assert reg.states(first.id)[-3:] == ["ready", "draining", "gone"]  # gateways saw it draining
        assert "draining" not in reg.states(second.id)
        wait_for(
            lambda: (c := locked_clocks(cluster.gpu_dir, 4))[0] is None and c[1] is None and (c[2] or 0) >= 800,
            "GPUs 0,1 reset and GPUs 2,3 locked",
        )
        wait_for(
            lambda: (t := telemetry(r)) is not None and t.instances == {second.id: "ready"},
            "telemetry showing only the second instance",
        )
        served = load.count()
        wait_for(lambda: load.count() >= served + 8, "requests served by the second instance")
        # the load stops: back to the idle clock
        load.set(0, 8)
        wait_for(lambda: locked_clocks(cluster.gpu_dir, 4)[2] == idle, "the idle clock again", 30)
    assert load.count() >= 12
    assert load.failures() == [], load.failures()
    cluster.stop_agent_and_check_reset()
    r.close()


def idle_clock(pool: str, tp: int) -> int:
    """The agent's idle clock for an instance of ``pool`` on the shipped profile and simulated H100s."""
    x = ClockInput(pool, tp, 0.0, 0)
    return choose_clock(load_builtin(), SloTargets(), H100_SM_CLOCKS_MHZ, x).sm_clock_mhz


def current_plan(r: redis.Redis) -> Plan | None:
    raw = r.get(KEYS.plan)
    return Plan.from_json(raw) if raw else None


def plan_layout(plan: Plan) -> frozenset[tuple[str, str, int, tuple[int, ...]]]:
    """What the agent runs for a plan (pool, TP, GPUs per instance id); clocks are the clock loop's."""
    return frozenset((i.id, i.pool, i.tp, tuple(i.gpus)) for i in plan.for_node(NODE))


def test_real_planner_follows_gateway_load_without_failing_requests(
    procs: Procs, tmp_path: Path, redis_url: str
) -> None:
    """``wattgate planner`` reads the load windows the gateway writes and re-plans every 2 s; the agent
    carries the plans out while requests keep flowing."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    cluster = Cluster(procs, tmp_path, redis_url, 8)
    planner = ["planner", "--redis-url", redis_url, "--nodes", f"{NODE}=8", "--pool-period-s", "2"]
    procs.start("planner", *planner, "--lease-s", "3", "--min-rps", "0.05", "--margin", "2", "--time-limit-s", "1")

    def all_ready() -> Plan | None:
        plan = current_plan(r)
        if plan is None or not plan.for_node(NODE):
            return None
        ready = {k: v for k, v in reg.ready().items() if v.state == "ready"}
        if set(ready) != {i.id for i in plan.for_node(NODE)}:
            return None
        return plan if cluster.gateway_routable() >= len(ready) else None

    with Registry(redis_url, cluster.gpu_dir, 8) as reg, Load(cluster.base_url) as load:
        quiet = wait_for(all_ready, "the quiet plan's instances ready", 40)
        load.set(0.5, 8)
        wait_for(lambda: load.count() >= 3, "requests at the low rate")
        before = plan_layout(quiet)
        load.set(4.0, 8)  # the load rises: the quiet layout cannot carry it
        busy = wait_for(
            lambda: (
                (p := current_plan(r)) is not None
                and plan_layout(p) != before
                and sum(p.forecast_rps.values()) > 2
                and p
            ),
            "a plan for the higher load",
            50,
        )
        # the planner re-plans every 2 s and may move things more than once: wait for a changed plan
        # whose instances, and no others, are ready
        busy = wait_for(
            lambda: (p := all_ready()) is not None and plan_layout(p) != before and p,
            "a changed plan's instances ready",
            40,
        )
        started = {i[0] for i in plan_layout(busy)} - {i[0] for i in before}
        assert started, (before, plan_layout(busy))
        for gone in {i[0] for i in before} - {i[0] for i in plan_layout(busy)}:

            def stopped(g: str = gone) -> bool:
                return reg.states(g)[-1:] == ["gone"]

            wait_for(stopped, f"{gone} drained and stopped", 30)
            assert reg.states(gone)[-3:] == ["ready", "draining", "gone"]
        clocks = locked_clocks(cluster.gpu_dir, 8)
        for inst in busy.for_node(NODE):
            assert all(clocks[g] is not None for g in inst.gpus), (inst, clocks)
        served = load.count()
        wait_for(lambda: load.count() >= served + 8, "requests served after the change")
        # clocks moved: the clock loop locked more than one clock on some GPU as the load changed
        moved = [g for g, h in reg.clock_history().items() if len({c for c in h if c is not None}) >= 2]
        assert moved, reg.clock_history()
        load.set(0, 8)
    assert load.failures() == [], load.failures()
    assert procs.stop("planner") == 0, procs.log("planner")
    cluster.stop_agent_and_check_reset()
    r.close()
