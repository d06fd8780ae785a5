"""sim-backend's sleep mode (vLLM's ``/sleep``, ``/wake_up``, ``/is_sleeping``) through real HTTP, and an agent that
puts a real ``wattgate sim-backend`` process to sleep and wakes it for the plan."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.agent.agent_support import FakeGpu, actuator
from tests.agent.simsupport import MODEL, serve_sim
from tests.agent.test_emulator import hinted, metrics
from tests.support import wait_for
from wattgate.agent.actuator import Timeouts
from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.options import EngineOptions
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.agent.reconcile import diff
from wattgate.planner.contract import InstanceState, PlannedInstance

SPEED = 2.0


def sleeping(url: str) -> bool:
    return bool(httpx.get(url + "/is_sleeping").json()["is_sleeping"])


def test_asleep_it_holds_requests_draws_idle_power_and_wakes_in_the_modelled_time(tmp_path: Path) -> None:
    with serve_sim(speed=SPEED, state_dir=tmp_path, sleep_mode=True) as srv:
        emu, url = srv.emulator, srv.url
        assert not sleeping(url)
        assert httpx.post(url + "/sleep?level=2").status_code == 400  # level 2 (weights dropped) is not emulated
        assert httpx.post(url + "/sleep?level=1").status_code == 200
        assert sleeping(url)
        m = metrics(url)  # vLLM's gauge of the sleep level, as a dashboard built for vLLM reads it
        assert (m["vllm:engine_sleep_state:awake"], m["vllm:engine_sleep_state:weights_offloaded"]) == (0, 1)

        # asleep, the engine idles: its GPUs draw its idle power at the clock the agent locked (the lowest)
        agent = SimulatedGpu(tmp_path, 0), SimulatedGpu(tmp_path, 1)
        for g in agent:
            g.lock_sm_clock(800)
        idle_w = emu.engine.power.idle_gpu_w(800) * 2
        wait_for(lambda: abs(sum(g.power_w() for g in agent) / idle_w - 1) < 0.01, "idle power at 800 MHz asleep")

        # a request that arrives asleep waits for the wake-up, outside the engine
        out: list[Any] = []
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        held = threading.Thread(
            target=lambda: out.append(
                client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body=hinted(100, 4))
            )
        )
        held.start()
        time.sleep(1.0)
        assert out == [] and emu.engine.idle and sleeping(url)

        woken_at = emu.now_s()
        t0 = time.monotonic()
        assert httpx.post(url + "/wake_up").status_code == 200
        assert sleeping(url)  # waking: still not taking requests
        wait_for(lambda: not sleeping(url), "awake")
        assert metrics(url)["vllm:engine_sleep_state:awake"] == 1
        assert time.monotonic() - t0 >= emu.wake_s / SPEED  # the modelled wake-up, in wall seconds
        held.join(timeout=30)
        (r,) = out
        assert r.usage.completion_tokens == 4
        assert r.model_extra["wattgate_sim"]["arrival_s"] >= woken_at + emu.wake_s  # entered only once awake
        client.close()
    # a 70B model on TP2: ~140 GB of weights over two 25 GB/s links plus 1 s, against ~95 s for a cold start
    assert 3.0 < emu.wake_s < 5.0


def test_without_sleep_mode_there_are_no_sleep_endpoints() -> None:
    with serve_sim(speed=SPEED) as srv:
        assert httpx.post(srv.url + "/sleep?level=1").status_code == 404
        assert httpx.get(srv.url + "/is_sleeping").status_code == 404


def test_the_agent_puts_a_sim_backend_to_sleep_and_wakes_it_for_the_plan(tmp_path: Path) -> None:
    gpus = [FakeGpu(0), FakeGpu(1)]
    opts = EngineOptions(
        kind=EngineKind.SIMULATED,
        log_dir=tmp_path / "logs",
        stop_grace_s=5,
        sleep_mode=True,
        gpu_state_dir=tmp_path / "gs",
        speed=SPEED,
        extra_args=("--arch", "llama-3.1-8b"),
    )
    act = actuator(tmp_path, gpus, opts, timeouts=Timeouts(drain_notice_s=0.1, start_s=60, poll_s=0.05, sleep_s=30))
    act.sleep_mode = True
    planned = PlannedInstance("s", "SS", "n1", [0, 1], 2, 1400, 1.0, 300.0)
    standby = PlannedInstance("s", "SS", "n1", [0, 1], 2, 1400, 0.0, 100.0, standby=True)
    try:
        act.apply(diff([planned], act.actual(), [0, 1], can_sleep=act.can_sleep).actions)
        engine = act.instances["s"].engine
        assert act.instances["s"].state is InstanceState.READY and engine.is_sleeping() is False
        pid = engine.pid

        act.apply(diff([standby], act.actual(), [0, 1], can_sleep=act.can_sleep).actions)
        assert act.instances["s"].state is InstanceState.ASLEEP and engine.is_sleeping() is True
        assert [g.locked for g in gpus] == [min(gpus[0].supported_sm_clocks_mhz())] * 2

        t0 = time.monotonic()
        act.apply(diff([planned], act.actual(), [0, 1], can_sleep=act.can_sleep).actions)
        woke_s = time.monotonic() - t0
        assert act.instances["s"].state is InstanceState.READY and engine.is_sleeping() is False
        assert engine.pid == pid  # the same process, woken in place
        # an 8B model's wake-up is modelled at ~1.3 s (16 GB over two links plus 1 s), at speed 2 in wall seconds
        assert woke_s >= 1.0 / SPEED
    finally:
        act.shutdown()
