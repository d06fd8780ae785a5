"""The engine model: scheduling, KV cache and preemption, clock changes, energy, and event jumps that change nothing."""

from __future__ import annotations

import dataclasses
import random

import pytest

from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.engine import Engine, Finished, Scheduler
from wattgate.servingmodel.errors import ServingModelError
from wattgate.servingmodel.experiments import poisson_run

MODEL = ServingModel("llama-3.1-70b", "vllm-v1")


def run(engine: Engine, arrivals: list[tuple[float, int, int]], step_s: float | None = None) -> list[Finished]:
    """Submit (time, prompt, output) requests; advance either only at arrivals (coarse) or every ``step_s``."""
    t = engine.time_s
    for k, (at, prompt, out) in enumerate(arrivals):
        if step_s is not None:
            while t + step_s < at:
                t += step_s
                engine.advance(t)
        engine.advance(at)
        engine.submit(str(k), prompt, out, at)
    end = arrivals[-1][0] + 3600
    engine.advance(end)
    assert engine.idle
    return sorted(engine.pop_finished(), key=lambda f: int(f.id))


def poisson(
    rate: float, n: int, seed: int = 1, prompt: tuple[int, int] = (100, 3000), out: tuple[int, int] = (1, 800)
) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        reqs.append((t, rng.randint(*prompt), rng.randint(*out)))
    return reqs


def test_a_lone_request_takes_one_prefill_step_then_one_decode_step_per_token() -> None:
    e = MODEL.engine(8)
    (f,) = run(e, [(1.0, 1024, 101)])
    cost = e.cost
    factors = e.law.factors(e.clock_mhz)
    prefill = cost.step(decodes=0, kv_tokens=0, prefill=((0, 1024),), sampled=1, factors=factors).total_s
    decodes = cost.decode_run(1, 1025, 100, factors).total_s
    assert f.ttft_s == pytest.approx(prefill + e.request_latency_s, rel=1e-9)
    assert f.tpot_s == pytest.approx(decodes / 100, rel=1e-9)
    assert f.finish_s == pytest.approx(1.0 + prefill + decodes, rel=1e-9)
    assert f.queue_s == 0.0 and f.preemptions == 0


def test_every_request_finishes_in_order_of_its_own_events() -> None:
    reqs = poisson(6.0, 400)
    done = run(MODEL.engine(8), reqs)
    assert [int(f.id) for f in done] == list(range(len(reqs)))
    for f, (at, prompt, out) in zip(done, reqs, strict=True):
        assert f.arrival_s == at and f.prompt == prompt and f.output == out
        assert (
            f.ttft_s > 0 and f.queue_s >= 0 and f.finish_s >= at + f.ttft_s - MODEL.engine(8).request_latency_s - 1e-9
        )
        assert (f.tpot_s is None) == (out == 1)


def test_advancing_in_small_increments_changes_nothing() -> None:
    """Closed-form runs of decode steps are exact: advancing every 7 ms gives the same results as only at arrivals."""
    reqs = poisson(4.0, 150, seed=3)
    coarse = run(MODEL.engine(4), reqs)
    fine = run(MODEL.engine(4), reqs, step_s=0.007)
    for a, b in zip(coarse, fine, strict=True):
        assert a.ttft_s == pytest.approx(b.ttft_s, abs=1e-9)
        assert a.finish_s == pytest.approx(b.finish_s, abs=1e-9)
    e1, e2 = MODEL.engine(4), MODEL.engine(4)
    run(e1, reqs)
    run(e2, reqs, step_s=0.05)
    assert e1.totals.energy_j == pytest.approx(e2.totals.energy_j, rel=1e-9)
    assert e1.totals.steps == e2.totals.steps


def test_a_full_cache_preempts_the_newest_request_and_everything_still_finishes() -> None:
    """TP2 of a 70B model leaves a cache of a few tens of thousands of tokens: long requests overflow it."""
    e = MODEL.engine(2)
    assert 10_000 < e.capacity_tokens < 60_000
    reqs = [(0.01 * k, 2000, 2000) for k in range(40)]  # 160k tokens at their longest
    done = run(e, reqs)
    assert len(done) == 40 and all(f.output == 2000 for f in done)
    assert e.totals.preemptions > 0
    assert sum(f.preemptions for f in done) == e.totals.preemptions
    assert max(f.preemptions for f in done[20:]) > 0  # the newest are preempted first
    with pytest.raises(ServingModelError, match="exceeds this instance's limit"):
        e.submit("huge", e.capacity_tokens, 10, e.time_s)


def test_a_lower_clock_is_slower_and_draws_less_power() -> None:
    reqs = poisson(2.0, 200, seed=5)
    fast, slow = MODEL.engine(8, clock_mhz=1980), MODEL.engine(8, clock_mhz=1000)
    f1, f2 = run(fast, reqs), run(slow, reqs)
    assert sum(f.ttft_s for f in f2) > sum(f.ttft_s for f in f1)
    assert fast.totals.energy_j / fast.time_s > slow.totals.energy_j / slow.time_s


def test_a_clock_change_applies_from_the_first_step_that_starts_after_it() -> None:
    e = MODEL.engine(8)
    e.submit("a", 8000, 400, 0.0)
    e.set_clock(800, 2.0)
    e.advance(100.0)
    (f,) = e.pop_finished()
    same = MODEL.engine(8)
    same.submit("a", 8000, 400, 0.0)
    same.advance(100.0)
    (g,) = same.pop_finished()
    assert f.ttft_s == g.ttft_s  # the prefill ran before the change
    assert f.finish_s > g.finish_s  # the decodes after it ran slower
    assert e.clock_mhz == 800


def test_an_idle_engine_draws_its_idle_power_and_energy_is_continuous() -> None:
    e = MODEL.engine(8, clock_mhz=1200)
    e.advance(10.0)
    idle = MODEL.calibration.power.idle_gpu_w(1200) * 8
    assert e.totals.energy_j == pytest.approx(idle * 10.0)
    e.submit("a", 1000, 50, 10.0)
    before = e.energy_j_at(10.0)
    later = e.energy_j_at(10.02)
    assert later > before  # a step is in flight: busy power from its start
    e.advance(30.0)
    assert e.energy_j_at(30.0) == pytest.approx(e.totals.energy_j)


def test_v0_prefills_without_decodes_and_v1_mixes_them() -> None:
    v0 = ServingModel("llama-2-70b", "dynamollm-2024").engine(8)
    v1 = ServingModel("llama-2-70b", "vllm-v1").engine(8)
    assert v0.config.scheduler is Scheduler.V0 and v1.config.scheduler is Scheduler.V1
    reqs = [(0.0, 500, 300), (1.0, 3000, 10)]
    d0, d1 = run(v0, reqs), run(v1, reqs)
    # while the second prompt prefills, V0 pauses the first request's decoding; V1 decodes it in the same step
    pause0 = d0[0].tpot_s
    assert pause0 is not None and d1[0].tpot_s is not None
    assert v0.totals.steps > 0 and v1.totals.steps > 0


def test_chunked_prefill_splits_prompts_longer_than_the_step_budget() -> None:
    m = ServingModel("llama-3.1-70b")
    whole = m.engine(8, max_num_batched_tokens=16384)
    chunked = m.engine(8, max_num_batched_tokens=2048)
    (a,) = run(whole, [(0.0, 12000, 2)])
    (b,) = run(chunked, [(0.0, 12000, 2)])
    assert chunked.totals.steps >= whole.totals.steps + 5  # 12000 / 2048: six prefill steps
    assert b.ttft_s > a.ttft_s  # more steps, each paying the fixed costs


def test_max_num_seqs_bounds_the_batch() -> None:
    e = MODEL.engine(8, max_num_seqs=4)
    for k in range(10):
        e.submit(str(k), 100, 200, 0.0)
    e.advance(0.5)
    assert e.running == 4 and e.waiting == 6
    e.advance(600.0)
    assert len(e.pop_finished()) == 10


def test_benchmark_replay_reports_means_and_tails() -> None:
    o = poisson_run(MODEL.engine(8), 4.0, 80, 1024, 350, seed=2)
    assert o.requests == 80
    assert o.ttft_p50_s <= o.ttft_p99_s and o.tpot_p50_s <= o.tpot_p99_s
    assert o.power_w > MODEL.calibration.power.idle_gpu_w(1980) * 8
    busy = o.compute_s + o.memory_s + o.comm_s + o.latency_s + o.overhead_s
    assert busy + o.idle_s == pytest.approx(o.duration_s, rel=0.05)
    assert o.comm_s > 0.05 * o.duration_s  # TP8: the all-reduces are a visible share of the time


def test_config_is_validated() -> None:
    with pytest.raises(ServingModelError):
        MODEL.engine(3)
    with pytest.raises(ServingModelError, match="does not fit"):
        ServingModel("llama-3.1-70b").engine(1)
    with pytest.raises(ServingModelError):
        dataclasses.replace(MODEL.config(8), gpu_memory_utilization=0.0)
