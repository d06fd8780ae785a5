"""The agent against a real engine: ``wattgate agent --engine llama.cpp`` starts, health-checks, drains and
stops llama.cpp's llama-server (SmolLM2-135M) behind ``wattgate gateway``, all processes on one Redis.

SIGKILL of the engine mid-stream: the stream ends with an error (no client hangs), the agent restarts
the engine and the gateway routes to it again. A bad model path: the heartbeat says why, and the agent
gives up after ``--start-retries`` instead of looping. A drain with real streams in flight: none is cut.
"""

from __future__ import annotations

import json
import os
import signal
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

from tests.integration.llama import ensure_built
from tests.integration.test_agent_e2e import Procs, Registry
from tests.support import wait_for, wait_port
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import Heartbeat, Keys, Plan, PlannedInstance

pytestmark = [pytest.mark.llama, pytest.mark.slow, pytest.mark.timeout(900)]

KEYS = Keys()
NODE = "n1"
MODEL = "smollm2"
INSTANCE = f"{NODE}-SS-a"
MESSAGES: Any = [{"role": "user", "content": "Tell me a story about a cat."}]


def publish(r: redis.Redis, instances: list[PlannedInstance]) -> None:
    """A plan as the planner publishes one: INCR plan:seq, SET plan, PUBLISH plan:events."""
    version = int(r.incr(KEYS.plan_seq))
    plan = Plan(version, time.time(), MODEL, instances, {p.pool: 1.0 for p in instances}, 100.0, 200.0)
    r.set(KEYS.plan, plan.to_json())
    r.publish(KEYS.plan_events, str(version))


class LlamaCluster:
    """``wattgate agent --engine llama.cpp`` (one simulated GPU) and ``wattgate gateway`` on one Redis."""

    def __init__(self, procs: Procs, tmp: Path, redis_url: str, model_file: Path, *agent_extra: str) -> None:
        binary, _ = ensure_built()
        self.procs, self.state_dir = procs, tmp / "agent-state"
        agent = ["agent", "--redis-url", redis_url, "--node", NODE, "--gpus", "sim:1", "--engine", "llama.cpp"]
        agent += ["--engine-command", str(binary), "--model", MODEL, "--model-file", str(model_file)]
        agent += ["--max-batch", "2", "--engine-arg=--ctx-size", "--engine-arg=1024", "--engine-arg=--threads"]
        agent += ["--engine-arg=1", "--state-dir", str(self.state_dir), "--port-base", str(free_port())]
        agent += ["--tick-s", "0.2", "--drain-timeout-s", "120", "--stop-grace-s", "10", "--start-timeout-s", "120"]
        procs.start("agent", *agent, *agent_extra)
        self.gw_port = free_port()
        gw = ["gateway", "--redis-url", redis_url, "--port", str(self.gw_port), "--classifier", "max_tokens"]
        procs.start("gateway", *gw, "--health-interval-s", "1")
        wait_port(self.gw_port, timeout_s=60)
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def engine_pid(self) -> int | None:
        try:
            engines = json.loads((self.state_dir / "engines.json").read_text())["engines"]
        except (OSError, ValueError, KeyError):
            return None
        return next((int(e["pid"]) for e in engines if e["planned"]["id"] == INSTANCE), None)

    def routable(self) -> int:
        """Registry instances the gateway itself routes to now (``wattgate_gateway_instances``)."""
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("wattgate_gateway_instances{") and 'routable="true"' in line and "registry" in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def stream(self, max_tokens: int) -> Iterator[openai.types.chat.ChatCompletionChunk]:
        return iter(
            self.client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True
            )
        )


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture
def model_file() -> Path:
    return ensure_built()[1]


def planned() -> PlannedInstance:
    return PlannedInstance(INSTANCE, "SS", NODE, [0], 1, 1980, 1.0, 100.0)


def test_engine_sigkilled_mid_stream_is_ejected_restarted_and_routed_to_again(
    procs: Procs, tmp_path: Path, redis_url: str, model_file: Path
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(r, [planned()])
    cluster = LlamaCluster(procs, tmp_path, redis_url, model_file)
    agent = procs.procs["agent"]
    with Registry(redis_url) as reg:
        wait_for(lambda: INSTANCE in reg.ready() and cluster.routable() == 1, "llama-server ready and routed", 180)
        first_pid = cluster.engine_pid()
        assert first_pid is not None
        chunks = cluster.stream(max_tokens=90)
        first = next(chunks)  # the stream is running on the engine
        assert first.choices
        os.kill(agent.pid, signal.SIGSTOP)  # the agent has not noticed yet: the gateway is on its own
        try:
            t0 = time.monotonic()
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(openai.APIError) as info:  # the stream ends with the gateway's error event
                for _ in chunks:
                    pass
            assert time.monotonic() - t0 < 60
            assert "upstream stream broke" in str(info.value)
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
            resp = httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=60)
            # connection refused: ejected at once, nothing else to try; a model whose only backend is down is a
            # 503 with Retry-After (issue 20), not a 502
            assert resp.status_code == 503 and resp.headers["retry-after"]
            assert (
                f'wattgate_gateway_ejections_total{{instance="{INSTANCE}"}} 1.0'
                in httpx.get(cluster.url + "/metrics").text
            )
            assert cluster.routable() == 0
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        # requests while the agent restarts the engine end quickly (an error, or a 200 once it is back)
        outcomes: list[tuple[int, float]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    t = time.monotonic()
                    status = client.post(cluster.url + "/v1/chat/completions", json=body).status_code
                    outcomes.append((status, time.monotonic() - t))
                    time.sleep(0.1)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            wait_for(lambda: "failed" in reg.states(INSTANCE), "the agent to notice the crash", 30)
            wait_for(lambda: reg.states(INSTANCE)[-1:] == ["ready"], "the engine restarted", 180)
            wait_for(lambda: any(s == 200 for s, _ in outcomes[-3:]), "requests served by the new engine", 120)
        finally:
            stop.set()
            thread.join(timeout=130)
        assert reg.states(INSTANCE)[-3:] == ["failed", "starting", "ready"]
        second_pid = cluster.engine_pid()
        assert second_pid not in (None, first_pid)
        assert cluster.routable() == 1  # re-admitted (the ejection ended when the registry said ready again)
        assert all(took < 60 for _, took in outcomes), outcomes
        assert {s for s, _ in outcomes} <= {200, 502, 503}, outcomes
    assert procs.stop("agent", signal.SIGTERM, timeout_s=60) == 0, procs.log("agent")
    with pytest.raises(ProcessLookupError):  # the agent stopped its engine on the way out
        os.kill(second_pid or 0, 0)
    r.close()


def test_a_bad_model_path_is_reported_in_the_heartbeat_without_a_crash_loop(
    procs: Procs, tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(r, [planned()])
    bad = tmp_path / "no-such-model.gguf"
    cluster = LlamaCluster(procs, tmp_path, redis_url, bad, "--start-retries", "2")

    def gave_up() -> str | None:
        raw = r.get(KEYS.heartbeat(NODE))
        notes = Heartbeat.from_json(raw).notes if raw else []
        return next((n for n in notes if "gave up" in n), None)

    note = wait_for(gave_up, "the heartbeat to say the agent gave up", 120)
    assert f"instance {INSTANCE} failed:" in note
    assert f"failed to load model, '{bad}'" in note or "failed to open GGUF file" in note, note
    log = (cluster.state_dir / "logs" / f"{INSTANCE}.log").read_text(errors="replace")
    launches = log.count("exiting due to model loading error")
    time.sleep(3)  # longer than the next backoff would be: no further launch
    assert log.count("exiting due to model loading error") == launches == 2
    assert (cluster.state_dir / "logs" / f"{INSTANCE}.log").read_text(errors="replace").count("exiting due") == 2
    assert procs.procs["agent"].poll() is None  # the agent itself keeps running and reporting
    assert json.loads(r.hget(KEYS.instances, INSTANCE) or "{}").get("state") == "failed"
    assert procs.stop("agent", signal.SIGTERM, timeout_s=60) == 0, procs.log("agent")
    r.close()


def test_a_drain_lets_real_streams_finish(procs: Procs, tmp_path: Path, redis_url: str, model_file: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    publish(r, [planned()])
    cluster = LlamaCluster(procs, tmp_path, redis_url, model_file)
    with Registry(redis_url) as reg, ThreadPoolExecutor(max_workers=2) as pool:
        wait_for(lambda: INSTANCE in reg.ready() and cluster.routable() == 1, "llama-server ready and routed", 180)
        started = threading.Barrier(3)

        def one_stream() -> tuple[str | None, int, bool]:
            chunks = cluster.stream(max_tokens=60)
            pieces, finish, done_first = 0, None, False
            for chunk in chunks:
                if not done_first:
                    done_first = True
                    started.wait(timeout=120)
                if chunk.choices:
                    pieces += bool(chunk.choices[0].delta.content)
                    finish = chunk.choices[0].finish_reason or finish
            return finish, pieces, done_first

        futures = [pool.submit(one_stream) for _ in range(2)]
        started.wait(timeout=120)  # both streams have their first chunk: they are in flight on the engine
        pid = cluster.engine_pid()
        publish(r, [])  # the plan drops the instance: drain, then stop
        wait_for(lambda: "draining" in reg.states(INSTANCE), "the instance draining", 30)
        results = [f.result(timeout=300) for f in futures]
        wait_for(lambda: reg.states(INSTANCE)[-1:] == ["gone"], "the instance stopped", 120)
    for finish, pieces, _ in results:
        assert finish in {"length", "stop"}, results  # a normal end: no stream was cut
        assert pieces >= 3, results
    assert reg.states(INSTANCE)[-3:] == ["ready", "draining", "gone"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid or 0, 0)
    assert procs.stop("agent", signal.SIGTERM, timeout_s=60) == 0, procs.log("agent")
    r.close()
