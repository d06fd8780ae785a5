"""sim-backend through real HTTP: the official openai client, the profile reproduced, clocks, /metrics, errors."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent import simprofiles
from tests.agent.simsupport import MODEL, SimServer, serve_sim
from tests.support import wait_port
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.embedded_redis import free_port

MSG = [{"role": "user", "content": "Say something."}]


def test_openai_client_sync_stream_and_not() -> None:
    with serve_sim(speed=50) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        stream = client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=7, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 7
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
        full = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=5)
        assert full.choices[0].message.role == "assistant" and len(full.choices[0].message.content.split()) == 5
        assert full.usage is not None and full.usage.completion_tokens == 5 and full.usage.prompt_tokens > 0
        done = client.completions.create(model=MODEL, prompt="hello", max_tokens=3)
        assert len(done.choices[0].text.split()) == 3
        texts = [
            c.choices[0].text for c in client.completions.create(model=MODEL, prompt="x", max_tokens=4, stream=True)
        ]
        assert len("".join(texts).split()) == 4


def test_openai_client_async_stream_with_output_hint() -> None:
    async def main(url: str) -> tuple[list[str], Any]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=100, stream=True, extra_body={"wattgate_sim": {"output_tokens": 12}}
        )
        parts, last = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                last = chunk
        await client.close()
        return parts, last

    with serve_sim(speed=50) as srv:
        parts, last = asyncio.run(main(srv.url))
    assert len("".join(parts).split()) == 12
    assert last.choices[0].finish_reason == "stop"  # the hint ended it, not max_tokens
    assert last.model_extra["wattgate_sim"]["timing"] == "modelled"


def test_stream_is_paced_in_wall_time_not_faster_than_modelled() -> None:
    with serve_sim(speed=10) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        t0 = time.monotonic()
        chunks = list(client.completions.create(model=MODEL, prompt="hi", max_tokens=20, stream=True))
        wall = time.monotonic() - t0
    sim = next(c.model_extra["wattgate_sim"] for c in chunks if c.model_extra.get("wattgate_sim"))
    modelled = sim["ttft_s"] + 19 * sim["tbt_mean_s"]
    assert modelled > 0.5  # TTFT ~0.1 s + 19 tokens x ~0.03 s
    assert wall >= modelled / 10  # never earlier than the model says (lower bound only)


async def _drive(
    srv: SimServer, rtype: str, load: float, speed: float, warmup_s: float, duration_s: float
) -> tuple[list[dict], float]:
    """Poisson arrivals of one type through the openai client: the measured requests' wattgate_sim, and
    the instance power over the measured part from the GPUs' energy counters."""
    inputs = {"S": 100, "M": 700, "L": 1500}
    outputs = {"S": 30, "M": 150, "L": 400}
    client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    rng = random.Random(7)
    await client.models.list()  # the client's first call is slow (set-up): keep it out of the schedule
    loop = asyncio.get_running_loop()
    t0, t, tasks, e0 = loop.time(), 0.0, [], None
    while (t := t + rng.expovariate(load)) < warmup_s + duration_s:
        await asyncio.sleep(max(0.0, t0 + t / speed - loop.time()))
        if e0 is None and t >= warmup_s:
            e0, w0 = sum(g.energy_j() for g in srv.gpus), time.monotonic()
        body = {"wattgate_sim": {"input_tokens": inputs[rtype[0]], "output_tokens": outputs[rtype[1]]}}
        coro = client.completions.create(model=MODEL, prompt="x", max_tokens=1000, extra_body=body)
        tasks.append((t >= warmup_s, asyncio.create_task(coro)))
    await asyncio.sleep(max(0.0, t0 + (warmup_s + duration_s) / speed - loop.time()))
    power = (sum(g.energy_j() for g in srv.gpus) - e0) / (time.monotonic() - w0)  # type: ignore[operator]
    results = [(m, await task) for m, task in tasks]
    await client.close()
    return [r.model_extra["wattgate_sim"] for m, r in results if m], power


@pytest.mark.parametrize(("clock", "load", "rtype"), [(1980, 2.0, "SS"), (800, 1.0, "MM")])
def test_reproduces_the_profile_it_was_given(clock: int, load: float, rtype: str) -> None:
    """P99 TTFT/TBT within 12 %/8 %, power within 10 % of the profile at the load the engine saw."""
    speed, warmup, duration = 20.0, 10.0, 30.0
    with serve_sim(speed=speed, window_s=warmup) as srv:
        for g in srv.gpus:
            g.lock_sm_clock(clock)
        time.sleep(0.1)  # the engine polls the clock every 50 ms
        sims, power = asyncio.run(_drive(srv, rtype, load, speed, warmup, duration))
    assert len(sims) > 15 and {s["request_type"] for s in sims} == {rtype}
    assert {s["sm_clock_mhz"] for s in sims} == {clock}
    # the load the engine saw (a sample of a Poisson process, and a busy machine may lag the client)
    seen = float(np.mean([s["load_rps"] for s in sims]))
    assert seen == pytest.approx(load, rel=0.4)
    ttft = float(np.percentile([s["ttft_s"] for s in sims], 99))
    tbt = float(np.percentile([s["tbt_mean_s"] for s in sims], 99))
    assert ttft == pytest.approx(simprofiles.ttft(clock, rtype, max(seen, 1.0)), rel=0.12)
    assert tbt == pytest.approx(simprofiles.tbt(clock, rtype, max(seen, 1.0)), rel=0.08)
    assert power == pytest.approx(simprofiles.power(2, clock, max(seen, 1.0)), rel=0.10)


def test_lowering_the_locked_clock_slows_it_and_lowers_power(tmp_path: Path) -> None:
    # 20 simulated seconds of load window = 4 wall seconds at speed 5: every request below stays in it
    with serve_sim(speed=5, window_s=20, state_dir=tmp_path) as srv:
        agent = SimulatedGpu(tmp_path, 0), SimulatedGpu(tmp_path, 1)  # another handle, as the agent has
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)

        def burst() -> list[dict]:
            out = [client.completions.create(model=MODEL, prompt="hello", max_tokens=3) for _ in range(10)]
            time.sleep(0.3)  # the engine writes its power every 0.1 s
            return [r.model_extra["wattgate_sim"] for r in out]

        fast = burst()
        p_fast = sum(g.power_w() for g in agent)
        for g in agent:
            g.lock_sm_clock(800)
        time.sleep(0.2)
        slow = burst()
        p_slow = sum(g.power_w() for g in agent)
    assert {f["sm_clock_mhz"] for f in fast} == {1980} and {s["sm_clock_mhz"] for s in slow} == {800}
    # profile: TTFT x2.07 and TBT x1.44 from 1980 to 800 MHz
    assert min(s["ttft_s"] for s in slow) > 1.5 * max(f["ttft_s"] for f in fast)
    assert np.mean([s["tbt_mean_s"] for s in slow]) > 1.3 * np.mean([f["tbt_mean_s"] for f in fast])
    # load 0.5 req/s at 1980 MHz vs 1 req/s at 800 MHz: still less power (modelled: 850 W vs ~390 W)
    assert 140 < p_slow < p_fast


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.labels == {"model_name": MODEL}
            out[s.name] = s.value
    return out


def test_metrics_batch_limit_and_disconnect() -> None:
    with serve_sim(speed=5, max_batch=1) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(model=MODEL, prompt="x", max_tokens=5000, stream=True)
        next(iter(stream))  # the first request is running
        with httpx.stream(
            "POST", f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "y", "max_tokens": 3, "stream": True}
        ) as second:
            deadline = time.monotonic() + 5

            def settled(m: dict[str, float]) -> bool:  # power is sampled periodically: wait for the sample
                return m["vllm:num_requests_waiting"] == 1 and m["wattgate_sim_power_watts"] > 140

            while not settled(m := _metrics(srv.url)) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert m["vllm:num_requests_running"] == 1 and m["vllm:num_requests_waiting"] == 1
            assert m["wattgate_sim_power_watts"] > 140 and m["wattgate_sim_sm_clock_mhz"] == 1980
            stream.close()  # the client goes away: its slot goes to the waiting request
            body = second.read().decode()
        assert "data: [DONE]" in body and body.count('"text":"') >= 3
        m = _metrics(srv.url)
        assert m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
        assert m["vllm:request_success_total"] == 1 and m["vllm:generation_tokens_total"] >= 4


def test_errors_are_openai_errors() -> None:
    with serve_sim(speed=50) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="nope", messages=MSG)
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=0)
        with pytest.raises(openai.BadRequestError, match="messages"):
            client.chat.completions.create(model=MODEL, messages=[])
        r = httpx.post(f"{srv.url}/v1/completions", content=b"{oops")
        assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "x", "stream": "yes"})
        assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health").status_code == 200
        assert client.completions.create(model=MODEL, prompt="still alive", max_tokens=1).choices[0].text


def test_cli_sim_backend_with_the_agent_flags(tmp_path: Path) -> None:
    path = simprofiles.write_small_profile(tmp_path / "p.json")
    port = free_port()
    cmd = [sys.executable, "-m", "wattgate", "sim-backend", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", MODEL, "--profile", str(path), "--tp", "2", "--gpus", "4,5"]
    cmd += ["--gpu-state-dir", str(tmp_path / "gpus"), "--speed", "20", "--max-batch", "8"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        wait_port(port, 30)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2
        assert sorted(p.name for p in (tmp_path / "gpus").glob("*.json")) == [
            "gpu4.activity.json",
            "gpu5.activity.json",
        ]
        SimulatedGpu(tmp_path / "gpus", 4).lock_sm_clock(800)
        time.sleep(0.2)
        r = client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert r.model_extra["wattgate_sim"]["sm_clock_mhz"] == 800  # the slowest GPU gates the TP group
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "BAD"], "not a wattgate profile"),
        (["--profile", "GOOD", "--class-edges", "10,5,3,4"], "--class-edges: input class edges must satisfy"),
        (["--profile", "GOOD", "--gpus", "0"], "TP2 needs 2 GPUs"),
        (["--profile", "GOOD", "--gpus", "0,x"], "--gpu-indices: expected an integer, got 'x'"),
    ],
)
def test_cli_sim_backend_bad_input_is_a_clear_error(tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{}")
    good = simprofiles.write_small_profile(tmp_path / "good.json")
    extra = [str(tmp_path / "bad.json") if x == "BAD" else str(good) if x == "GOOD" else x for x in extra]
    cmd = [sys.executable, "-m", "wattgate", "sim-backend", "--model", "m", "--tp", "2", *extra]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("wattgate sim-backend: error: ")
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_hints_decide_the_request_type_and_a_gone_client_frees_its_slot() -> None:
    with serve_sim(speed=20, max_batch=1) as srv:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 500, "wattgate_sim": {"input_tokens": 2000}}
        r = httpx.post(f"{srv.url}/v1/completions", json=body, headers={"x-wattgate-output-tokens": "400"}, timeout=30)
        sim = r.json()["wattgate_sim"]
        assert (sim["request_type"], sim["input_tokens"], sim["output_tokens"]) == ("LL", 2000, 400)
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        r = httpx.post(f"{srv.url}/v1/completions", json=body, headers={"x-wattgate-output-tokens": "many"})
        assert r.status_code == 400 and "x-wattgate-output-tokens" in r.json()["error"]["message"]
        # a non-streamed request whose client times out is aborted, as vLLM does
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/v1/completions", json={**body, "max_tokens": 100000}, timeout=0.3)
        deadline = time.monotonic() + 5
        while _metrics(srv.url)["vllm:num_requests_running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _metrics(srv.url)["vllm:num_requests_running"] == 0
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.json()["usage"]["completion_tokens"] == 2
