"""The batching model in simulated time: batch limit and queue, clock and load effects, power, determinism."""

from __future__ import annotations

import pytest

from tests.agent import simprofiles
from wattgate.agent.engines.sim_model import FACTOR_HI, FACTOR_LO, BatchModel, SimEngineError, SimSettings
from wattgate.profiles.classes import RequestType

SS, MM, LL = RequestType.parse("SS"), RequestType.parse("MM"), RequestType.parse("LL")


def model(**kw: object) -> BatchModel:
    return BatchModel(simprofiles.small_profile(), SimSettings(tp=2, **kw))  # type: ignore[arg-type]


def run_until_done(m: BatchModel, clock: int, until: float = 1e6, step: float = 0.01) -> list[object]:
    events = []
    t = 0.0
    while m.num_running or m.num_waiting:
        t += step
        events += m.advance(t, clock)
        assert t < until
    return events


def test_factor_p99_is_one() -> None:
    assert abs(FACTOR_LO + 0.99 * (FACTOR_HI - FACTOR_LO) - 1.0) < 1e-12


def test_single_request_follows_the_profile() -> None:
    m = model(load_window_s=10.0)
    req = m.submit("a", SS, 100, 20, now_s=0.0, clock_mhz=1980)
    run_until_done(m, 1980)
    p = simprofiles
    # load at admission = 1 arrival / 10 s window, below the lowest measured load -> lowest point
    assert FACTOR_LO * p.ttft(1980, "SS", 1.0) <= req.ttft_s <= FACTOR_HI * p.ttft(1980, "SS", 1.0)  # type: ignore[operator]
    assert FACTOR_LO * p.tbt(1980, "SS", 1.0) <= req.tbt_mean_s <= FACTOR_HI * p.tbt(1980, "SS", 1.0)  # type: ignore[operator]
    assert req.emitted == 20 and m.generation_tokens_total == 20 and m.finished_total == 1


def test_lower_clock_is_slower() -> None:
    fast, slow = model(seed=3), model(seed=3)
    a = fast.submit("a", MM, 700, 50, now_s=0.0, clock_mhz=1980)
    b = slow.submit("a", MM, 700, 50, now_s=0.0, clock_mhz=800)
    run_until_done(fast, 1980)
    run_until_done(slow, 800)
    assert b.ttft_s / a.ttft_s == pytest.approx(simprofiles.ttft(800, "MM", 1) / simprofiles.ttft(1980, "MM", 1))  # type: ignore[operator]
    assert b.tbt_mean_s > a.tbt_mean_s * 1.3  # type: ignore[operator]


def test_clock_change_slows_a_running_request() -> None:
    m = model()
    req = m.submit("a", SS, 100, 40, now_s=0.0, clock_mhz=1980)
    t = 0.0
    while req.emitted < 20:
        t += 0.01
        m.advance(t, 1980)
    first_half = (req.last_token_s - req.first_token_s) / 19  # type: ignore[operator]
    start = req.last_token_s
    while not req.done:
        t += 0.01
        m.advance(t, 800)
    second_half = (req.last_token_s - start) / 20  # type: ignore[operator]
    ratio = simprofiles.tbt(800, "SS", 1) / simprofiles.tbt(1980, "SS", 1)
    # the gap after token 20 was scheduled before the change; the 19 after it at the new clock
    assert second_half / first_half == pytest.approx((1 + 19 * ratio) / 20)


def test_batch_limit_queues_and_queue_time_adds_to_ttft() -> None:
    m = model(max_batch=2)
    reqs = [m.submit(str(i), SS, 100, 10, now_s=0.0, clock_mhz=1980) for i in range(3)]
    assert (m.num_running, m.num_waiting) == (2, 1)
    run_until_done(m, 1980)
    first_done = min(r.last_token_s for r in reqs[:2])  # type: ignore[type-var]
    assert reqs[2].admitted_s == pytest.approx(first_done)
    assert reqs[2].ttft_s > first_done  # type: ignore[operator]


def test_cancel_frees_the_slot() -> None:
    m = model(max_batch=1)
    m.submit("a", SS, 100, 1000, now_s=0.0, clock_mhz=1980)
    b = m.submit("b", SS, 100, 5, now_s=0.0, clock_mhz=1980)
    assert m.num_waiting == 1
    m.cancel("a", 0.5, 1980)
    assert (m.num_running, m.num_waiting) == (1, 0) and b.admitted_s == 0.5
    run_until_done(m, 1980)
    assert b.emitted == 5


def test_load_and_power() -> None:
    m = model(load_window_s=10.0, idle_power_w=70.0)
    assert m.power_w(0.0, 1980) == 140.0  # idle: 2 GPUs x 70 W
    for i in range(40):  # 4 req/s over the 10 s window
        m.submit(str(i), SS, 100, 1, now_s=i * 0.25, clock_mhz=1980)
        m.advance(i * 0.25, 1980)
    now = 39 * 0.25
    assert m.load_rps(now) == pytest.approx(4.0)
    assert m.power_w(now, 1980) == pytest.approx(simprofiles.power(2, 1980, 4.0))
    assert m.power_w(now, 800) == pytest.approx(simprofiles.power(2, 800, 4.0))
    half = m.power_w(now + 5.0 + 1e-9, 1980)  # half the arrivals left the window: 2 req/s
    assert half == pytest.approx(simprofiles.power(2, 1980, 2.0), rel=0.03)
    run_until_done(m, 1980)
    assert m.power_w(100.0, 1980) == 140.0


def test_same_seed_same_latencies() -> None:
    def ttfts(seed: int) -> list[float]:
        m = model(seed=seed)
        reqs = [m.submit(str(i), SS, 100, 3, now_s=i * 0.5, clock_mhz=1980) for i in range(5)]
        run_until_done(m, 1980)
        return [r.ttft_s for r in reqs]  # type: ignore[misc]

    assert ttfts(1) == ttfts(1) and ttfts(1) != ttfts(2)


def test_bad_settings_and_requests() -> None:
    with pytest.raises(SimEngineError, match="TP8"):
        BatchModel(simprofiles.small_profile(), SimSettings(tp=8))
    with pytest.raises(SimEngineError):
        SimSettings(tp=2, max_batch=0)
    m = model()
    with pytest.raises(SimEngineError, match="request type"):
        m.submit("x", RequestType.parse("LS"), 2000, 10, now_s=0.0, clock_mhz=1980)
