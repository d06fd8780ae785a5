"""The emulator's driver on a fake wall clock (no server, no sleeping): token timing, clock changes, energy."""

from __future__ import annotations

import random

import pytest

from wattgate.agent.engines.emulator import CLOCK_POLL_S, POWER_WRITE_S, Emulator, EmulatorSettings
from wattgate.agent.engines.emulator_requests import ParsedRequest
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.profiles.classes import ClassEdges
from wattgate.servingmodel.calibration import ServingModel

MODEL = ServingModel("llama-3.1-70b", "vllm-v1")
TICK_S = 1 / 64  # exact in binary: fake times never round across a poll boundary


class FakeWall:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def emulator(speed: float = 1.0, tp: int = 8) -> tuple[Emulator, FakeWall, tuple[SimulatedGpu, ...]]:
    wall = FakeWall()
    gpus = tuple(SimulatedGpu(None, i, now_s=wall) for i in range(tp))
    emu = Emulator(MODEL, EmulatorSettings(model="m", tp=tp, speed=speed), gpus, wall_s=wall)
    return emu, wall, gpus


def request(prompt: int, output: int, stream: bool = True) -> ParsedRequest:
    rtype = ClassEdges().request_type(prompt, output)
    return ParsedRequest("completions", "m", stream, False, prompt, output, "length", rtype)


class Loop:
    """What ``Emulator.run`` does, on the fake wall clock: a driver step every tick, a GPU round every CLOCK_POLL_S."""

    def __init__(self, emu: Emulator, wall: FakeWall) -> None:
        self.emu, self.wall, self.synced_at = emu, wall, -1e9

    def tick(self, tick_s: float = TICK_S) -> None:
        self.emu.step()
        if self.wall.t - self.synced_at >= CLOCK_POLL_S:
            self.emu.sync_gpus()
            self.synced_at = self.wall.t
        self.wall.t += tick_s

    def until(self, sim_s: float, tick_s: float = TICK_S) -> None:
        while self.emu.now_s() < sim_s:
            self.tick(tick_s)


def test_a_token_is_handed_out_when_its_step_has_ended_plus_the_latency_outside_the_engine() -> None:
    emu, wall, _ = emulator()
    offline = MODEL.engine(8)
    offline.submit("a", 1024, 3, 0.0)
    offline.advance(float("inf"), stop_when_idle=True)
    (f,) = offline.pop_finished()
    first_visible = f.ttft_s  # arrival at 0: the step's end plus request_latency_s
    rid, w = emu.submit(request(1024, 3))
    wall.t += first_visible * (1 - 1e-9)
    emu.step()
    assert w.visible == 0  # one instant before it is due
    wall.t += first_visible * 2e-9
    emu.step()
    assert w.visible == 1
    Loop(emu, wall).until(f.finish_s + emu.egress_s + 0.01)
    assert w.finished is not None and w.visible == 3
    assert w.finished.ttft_s == pytest.approx(f.ttft_s, rel=1e-9) and w.finished.tpot_s == pytest.approx(f.tpot_s)
    assert emu.sim_fields(rid)["ttft_s"] == w.finished.ttft_s


def test_non_streamed_requests_are_woken_only_at_their_end() -> None:
    emu, wall, _ = emulator()
    _, w = emu.submit(request(100, 50, stream=False))
    seen = []
    while w.finished is None:
        emu.step()
        seen.append(w.changed.is_set())
        wall.t += TICK_S
    assert not any(seen[:-1]) and seen[-1] and w.visible == 50


def test_a_locked_clock_applies_from_the_next_engine_step_after_it_is_read() -> None:
    """A long prompt prefills in several chunk steps (compute-bound, so the clock matters); the clock is
    locked and read during the first: that step ends at the old clock, the rest run at the new one."""
    prompt = 4 * MODEL.config(8).max_num_batched_tokens

    def offline(clock_from_s: float | None) -> float:
        engine = MODEL.engine(8)
        engine.submit("x", prompt, 2, 0.0)
        if clock_from_s is not None:
            engine.set_clock(800, clock_from_s)
        engine.advance(float("inf"), stop_when_idle=True)
        return engine.pop_finished()[0].ttft_s

    emu, wall, gpus = emulator()
    _, w = emu.submit(request(prompt, 2, stream=False))
    loop = Loop(emu, wall)
    loop.until(0.1)
    for g in gpus:
        g.lock_sm_clock(800)
    emu.step()
    emu.sync_gpus()  # the read happens here, during the first chunk step
    read_at = emu.now_s()
    loop.until(30.0)
    assert w.finished is not None and emu.snapshot().sm_clock_mhz == 800
    assert w.finished.ttft_s == pytest.approx(offline(read_at), rel=1e-9)
    assert offline(None) < w.finished.ttft_s < offline(0.0)  # slower than at 1980 MHz, but not from the first step


@pytest.mark.parametrize("speed", [1.0, 8.0])
def test_driven_in_irregular_pieces_it_is_the_engine_run_offline_and_the_gpus_count_its_energy(speed: float) -> None:
    """Whatever the loop's jitter, every request's timings are those of the engine run offline on the same
    arrivals; the GPUs' counters follow the engine's energy / speed, at most one write behind; the power
    they read is the modelled power once it is steady."""
    emu, wall, gpus = emulator(speed)
    rng = random.Random(3)
    t, arrivals = 0.0, []
    while t < 60:
        t += rng.expovariate(3.0)
        arrivals.append(t)
    stream, waiters = [], []
    loop = Loop(emu, wall)
    for at in arrivals:
        while emu.now_s() < at:
            loop.tick(rng.uniform(0.2, 3.0) * TICK_S / speed)  # an irregular loop
        prompt, out = rng.randint(100, 3000), rng.randint(10, 500)
        stream.append((emu.now_s(), prompt, out))
        waiters.append(emu.submit(request(prompt, out, stream=False))[1])
    loop.until(200.0, TICK_S / speed)
    offline = MODEL.engine(8)
    for k, (at, prompt, out) in enumerate(stream):
        offline.advance(at)
        offline.submit(str(k), prompt, out, at)
    offline.advance(float("inf"), stop_when_idle=True)
    for f in offline.pop_finished():
        got = waiters[int(f.id)].finished
        assert got is not None and (got.ttft_s, got.finish_s) == pytest.approx((f.ttft_s, f.finish_s), rel=1e-9)
    counted = sum(g.energy_j() for g in gpus)  # from 0 J, and the first write is at the first step
    modelled = emu.engine.totals.energy_j / speed
    idle_w = emu.engine.power.idle_gpu_w(1980) * 8
    assert counted == pytest.approx(modelled, abs=idle_w * (POWER_WRITE_S + 2 * CLOCK_POLL_S))  # one write behind
    assert sum(g.power_w() for g in gpus) == pytest.approx(idle_w, rel=1e-3)
    assert emu.power_w == pytest.approx(idle_w, rel=1e-6)
