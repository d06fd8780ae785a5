"""The fake vLLM server behaves as vLLM does where the agent depends on it (dev-mode sleep endpoints, what a
sleep does to running and arriving requests, ``/health``, ``/metrics``), and the vLLM engine drives it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest

from tests.agent.agent_support import fake_vllm_command
from tests.support import wait_for, wait_port
from wattgate.agent.engines.base import EngineError, EngineKind, EngineSpec, parse_metrics
from wattgate.agent.engines.options import EngineOptions
from wattgate.agent.engines.vllm import VllmEngine
from wattgate.embedded_redis import free_port


class Fake:
    def __init__(self, tmp: Path, *flags: str, dev_mode: bool = True, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.events = tmp / f"events-{self.port}.jsonl"
        environ = {**os.environ, "FAKE_VLLM_EVENTS": str(self.events), **env}
        environ.pop("VLLM_SERVER_DEV_MODE", None)
        if dev_mode:
            environ["VLLM_SERVER_DEV_MODE"] = "1"
        cmd = [*fake_vllm_command(), "m", "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, env=environ)
        wait_port(self.port)

    def metric(self, name: str, **labels: str) -> float | None:
        text = httpx.get(self.url + "/metrics").text
        if labels:
            wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
            text = "\n".join(line for line in text.splitlines() if wanted in line)
        return parse_metrics(text, [name])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for f in started:
        f.stop()


def engine_for(fake: Fake, tmp: Path, sleep_mode: bool = True) -> VllmEngine:
    spec = EngineSpec("v0", "m", "SS", 1, (0,), ("GPU-0",), "127.0.0.1", fake.port, 8)
    return VllmEngine(spec, EngineOptions(kind=EngineKind.VLLM, log_dir=tmp, sleep_mode=sleep_mode))


def test_the_fake_answers_like_vllm_and_sleeps_with_the_dev_endpoints(tmp_path: Path, fakes: list[Fake]) -> None:
    fake = Fake(tmp_path, "--enable-sleep-mode")
    fakes.append(fake)
    health = httpx.get(fake.url + "/health")
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(fake.url + "/v1/models").json()["data"][0]["id"] == "m"
    assert fake.metric("vllm:engine_sleep_state", sleep_state="awake") == 1.0
    assert httpx.get(fake.url + "/is_sleeping").json() == {"is_sleeping": False}
    slept = httpx.post(fake.url + "/sleep?level=1")
    assert slept.status_code == 200 and slept.content == b""
    assert httpx.get(fake.url + "/is_sleeping").json() == {"is_sleeping": True}
    assert httpx.get(fake.url + "/health").status_code == 200  # vLLM's health check ignores sleep
    assert fake.metric("vllm:engine_sleep_state", sleep_state="weights_offloaded") == 1.0
    assert fake.metric("vllm:engine_sleep_state", sleep_state="awake") == 0.0

    # a request that arrives while asleep waits until the engine wakes, then completes
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="none", max_retries=0)
    done: list[str] = []
    waiter = threading.Thread(target=lambda: done.append(client.completions.create(model="m", prompt="x").id))
    waiter.start()
    wait_for(lambda: fake.metric("vllm:num_requests_waiting") == 1.0, "the request to wait")
    assert done == []
    woke = httpx.post(fake.url + "/wake_up")
    assert woke.status_code == 200 and woke.content == b""
    waiter.join(timeout=10)
    assert len(done) == 1 and httpx.get(fake.url + "/is_sleeping").json() == {"is_sleeping": False}
    (request,) = [json.loads(line) for line in fake.events.read_text().splitlines() if '"request"' in line]
    assert request["arrived_asleep"] is True
    client.close()


def test_sleep_aborts_running_requests_unless_told_to_wait(tmp_path: Path, fakes: list[Fake]) -> None:
    fake = Fake(tmp_path, "--enable-sleep-mode", FAKE_VLLM_TOKEN_S="0.05")
    fakes.append(fake)
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="none", max_retries=0)

    def finish_reasons(mode: str, tokens: int) -> list[str | None]:
        reasons: list[str | None] = []

        def run() -> None:
            with client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=tokens, stream=True
            ) as stream:
                reasons.append([c.choices[0].finish_reason for c in stream if c.choices][-1])

        t = threading.Thread(target=run)
        t.start()
        wait_for(lambda: fake.metric("vllm:num_requests_running") == 1.0, "the stream to run")
        assert httpx.post(fake.url + f"/sleep?level=1{mode}", timeout=30).status_code == 200
        t.join(timeout=30)
        assert httpx.post(fake.url + "/wake_up").status_code == 200
        return reasons

    assert finish_reasons("", 400) == ["abort"]  # vLLM's default mode (400 tokens would take 20 s)
    assert finish_reasons("&mode=wait", 20) == ["length"]
    client.close()


def test_without_dev_mode_or_sleep_mode_the_engine_says_why(tmp_path: Path, fakes: list[Fake]) -> None:
    no_dev = Fake(tmp_path, "--enable-sleep-mode", dev_mode=False)
    no_sleep = Fake(tmp_path)
    fakes += [no_dev, no_sleep]
    assert httpx.post(no_dev.url + "/sleep?level=1").status_code == 404
    engines = [engine_for(no_dev, tmp_path), engine_for(no_sleep, tmp_path), engine_for(no_sleep, tmp_path, False)]
    try:
        assert engines[0].is_sleeping() is None
        with pytest.raises(EngineError, match=r"answered HTTP 404.*VLLM_SERVER_DEV_MODE=1"):
            engines[0].sleep(5)
        with pytest.raises(EngineError, match=r"POST /sleep\?level=1 answered HTTP 500: Internal Server Error"):
            engines[1].sleep(5)
        with pytest.raises(EngineError, match="started without sleep mode"):
            engines[2].sleep(5)
    finally:
        for e in engines:
            e.close()


def test_the_vllm_engine_sleeps_and_wakes_and_waits_until_it_reads_so(tmp_path: Path, fakes: list[Fake]) -> None:
    # the engine answers at once and takes 0.5 s to do it, as vLLM warns it may: sleep() returns only once asleep
    fake = Fake(
        tmp_path, "--enable-sleep-mode", FAKE_VLLM_SLEEP_S="0.5", FAKE_VLLM_WAKE_S="0.5", FAKE_VLLM_ANSWER_EARLY="1"
    )
    failing = Fake(tmp_path, "--enable-sleep-mode", FAKE_VLLM_WAKE_FAIL="1")
    fakes += [fake, failing]
    with closing(engine_for(fake, tmp_path)) as engine, closing(engine_for(failing, tmp_path)) as broken:
        engine.adopt(fake.proc.pid)  # running() watches the process
        assert engine.can_sleep and engine.is_sleeping() is False
        engine.sleep(10)
        assert engine.is_sleeping() is True
        engine.wake(10)
        assert engine.is_sleeping() is False and engine.healthy()
        with pytest.raises(EngineError, match=r"not asleep 0 s after POST /sleep\?level=1 \(/is_sleeping: False\)"):
            engine.sleep(0.1)
        broken.sleep(10)
        with pytest.raises(EngineError, match="POST /wake_up answered HTTP 500"):
            broken.wake(10)
        assert broken.is_sleeping() is True
