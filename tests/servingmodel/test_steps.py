"""Step times: measured kernels composed per step, the clock law, and the closed-form runs of decode steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wattgate.servingmodel.arch import architecture
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.kernels import isotonic, kernel_curves
from wattgate.servingmodel.power import PowerModel
from wattgate.servingmodel.steps import ClockLaw, EngineOverheads, StepCost, StepTime


def cost(arch: str = "llama-3.1-70b", tp: int = 8, **overheads: float) -> StepCost:
    return StepCost(architecture(arch), tp, kernel_curves(arch, tp), EngineOverheads(**overheads))


def test_isotonic_is_the_monotone_least_squares_fit() -> None:
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    fit = isotonic(y)
    assert list(fit) == pytest.approx([1.0, 7 / 3, 7 / 3, 7 / 3, 4.5, 4.5])
    assert np.all(np.diff(fit) >= 0)


def test_steps_grow_with_tokens_and_context_and_shrink_with_tp() -> None:
    c8, c2 = cost(tp=8), cost(tp=2)
    f = (1.0, 1.0, 1.0)
    small = c8.step(decodes=8, kv_tokens=8000, prefill=(), sampled=8, factors=f).total_s
    more_ctx = c8.step(decodes=8, kv_tokens=80000, prefill=(), sampled=8, factors=f).total_s
    prefill = c8.step(decodes=8, kv_tokens=8000, prefill=((0, 1024),), sampled=9, factors=f).total_s
    assert small < more_ctx < prefill
    assert c2.step(decodes=8, kv_tokens=8000, prefill=(), sampled=8, factors=f).total_s > small
    # a 70B decode step at TP8 reads ~17.6 GB of weights per GPU at ~2.4 TB/s: 7-12 ms of kernels
    assert 0.007 < small < 0.012


def test_all_reduce_time_is_its_own_part_and_its_share_grows_with_tp() -> None:
    """Two all-reduces of ``tokens x hidden`` bf16 values per layer: the message per GPU is the same at every
    TP while the GEMMs shrink as 1/TP, so communication is a larger share of a TP8 step than of a TP2 one
    (the power model prices it on its own, ``PowerModel.comm_w``)."""
    f = (1.0, 1.0, 1.0)
    shares = {}
    for tp in (2, 4, 8):
        c = cost(tp=tp)
        s = c.step(decodes=0, kv_tokens=0, prefill=((0, 1024),), sampled=1, factors=f)
        # 2 x 80 all-reduces of 1,024 x 8,192 bf16 values (16 MiB), at NVLink speed: ~0.05-0.15 ms each
        assert 160 * 0.05e-3 < s.comm_s < 160 * 0.15e-3, (tp, s.comm_s)
        assert s.total_s == pytest.approx(s.compute_s + s.memory_s + s.overhead_s + s.comm_s + s.latency_s)
        shares[tp] = s.comm_s / s.total_s
    assert shares[2] < shares[4] < shares[8]
    one = StepCost(architecture("llama-3.2-1b"), 1, kernel_curves("llama-3.2-1b", 1), EngineOverheads())
    assert one.step(decodes=4, kv_tokens=400, prefill=(), sampled=4, factors=f).comm_s == 0.0


def test_prefill_attention_of_a_chunk_is_the_difference_of_whole_prompts() -> None:
    c = cost()
    whole = c.prefill_attention_s(0, 4096)
    halves = c.prefill_attention_s(0, 2048) + c.prefill_attention_s(2048, 2048)
    assert halves == pytest.approx(whole, rel=1e-9)
    assert c.prefill_attention_s(8192, 1024) > c.prefill_attention_s(0, 1024)  # a long cached prefix costs more


@pytest.mark.parametrize("overheads", [{}, {"step_s": 7e-4, "sequence_s": 1e-5, "layer_s": 2e-5}])
@pytest.mark.parametrize(("n", "kv", "k"), [(1, 900, 40), (16, 20_000, 200), (300, 400_000, 30), (60, 5_000, 900)])
def test_a_decode_run_is_the_sum_of_its_steps(overheads: dict[str, float], n: int, kv: int, k: int) -> None:
    """The closed form matches step-by-step sums, and ``decode_steps_within`` is its inverse."""
    for arch in ("llama-3.1-70b", "llama-3.2-1b"):
        c = cost(arch, **overheads)
        for f in ((1.0, 1.0, 1.0), ClockLaw(0.9, 0.2).factors(1000), ClockLaw(0.5, 1.0, 1980, 1340, 1.0).factors(900)):
            steps = [c.step(decodes=n, kv_tokens=kv + i * n, prefill=(), sampled=n, factors=f) for i in range(k)]
            run = c.decode_run(n, kv, k, f)
            assert run.total_s == pytest.approx(sum(s.total_s for s in steps), rel=1e-9)
            assert run.compute_s == pytest.approx(sum(s.compute_s for s in steps), rel=1e-9)
            assert run.comm_s == pytest.approx(sum(s.comm_s for s in steps), rel=1e-9, abs=1e-12)
            assert run.overhead_s == pytest.approx(sum(s.overhead_s for s in steps), rel=1e-9, abs=1e-12)
            # decode_steps_within is the inverse: the most steps that fit a budget
            assert c.decode_steps_within(n, kv, run.total_s, f) == k
            assert c.decode_steps_within(n, kv, run.total_s * (1 - 1e-9), f) == k - 1


def test_lower_clocks_slow_compute_more_than_memory() -> None:
    law = ClockLaw(compute_exp=1.0, memory_exp=0.2)
    fc, fm, fl = law.factors(990)
    assert fc == pytest.approx(2.0) and fm == fl == pytest.approx(2.0**0.2)
    assert law.factors(1980) == (1.0, 1.0, 1.0)
    c = cost()
    prefill = [
        c.step(decodes=0, kv_tokens=0, prefill=((0, 4096),), sampled=1, factors=law.factors(x)) for x in (1980, 990)
    ]
    decode = [c.step(decodes=4, kv_tokens=4000, prefill=(), sampled=4, factors=law.factors(x)) for x in (1980, 990)]
    assert prefill[1].total_s / prefill[0].total_s > decode[1].total_s / decode[0].total_s > 1.0


def test_memory_bound_time_keeps_its_speed_down_to_the_knee() -> None:
    """HBM has its own clock: memory-bound time does not grow above the knee, and grows as knee / f below it;
    latency-bound time (and all-reduces) grows as (f_max / f) ** latency_exp from the top clock."""
    law = ClockLaw(compute_exp=0.5, memory_exp=1.0, memory_knee_mhz=1400, latency_exp=1.0)
    assert law.factors(1600)[1] == 1.0 and law.factors(1400)[1] == 1.0
    assert law.factors(700)[1] == pytest.approx(2.0)
    assert law.factors(990)[2] == pytest.approx(2.0) and law.factors(990)[0] == pytest.approx(2.0**0.5)
    c = cost()
    steps = {
        x: c.step(decodes=4, kv_tokens=4000, prefill=(), sampled=4, factors=law.factors(x)) for x in (1980, 1400, 700)
    }
    assert steps[1400].memory_s == steps[1980].memory_s
    assert steps[700].memory_s == pytest.approx(2.0 * steps[1980].memory_s)
    assert steps[1400].latency_s == pytest.approx(1980 / 1400 * steps[1980].latency_s)
    assert steps[1400].comm_s == pytest.approx(1980 / 1400 * steps[1980].comm_s)
    assert steps[700].overhead_s == steps[1980].overhead_s  # CPU time: no GPU clock in it


def test_serving_model_builds_engines_with_the_calibration_defaults() -> None:
    m = ServingModel()
    e = m.engine(8)
    assert e.config.max_num_seqs == m.engine_calibration.config.max_num_seqs
    assert e.clock_mhz == m.max_clock_mhz
    e2 = m.engine(4, clock_mhz=1200, max_num_seqs=64)
    assert e2.config.max_num_seqs == 64 and e2.clock_mhz == 1200
    assert dataclasses.replace(e2.config, tp=4).tp == 4


def test_each_kind_of_busy_second_is_priced_at_its_own_power() -> None:
    p = PowerModel(80.0, 20.0, 600.0, 500.0, 1.0, 1.0, 1980, comm_w=50.0, latency_w=10.0)
    idle = p.idle_gpu_w(990)
    assert idle == pytest.approx(90.0)
    parts = {"compute_s": 300.0, "memory_s": 250.0, "comm_s": 25.0, "latency_s": 5.0, "overhead_s": 0.0}
    for name, extra_w in parts.items():
        step = StepTime(**{"compute_s": 0.0, "memory_s": 0.0, "overhead_s": 0.0, name: 2.0})
        assert p.step_energy_j(step, 990, 4) == pytest.approx(4 * 2.0 * (idle + extra_w)), name
    # a calibration written before latency_w existed prices latency-bound time as memory-bound
    old = PowerModel(80.0, 20.0, 600.0, 500.0, 1.0, 1.0, 1980)
    assert old.step_energy_j(StepTime(0.0, 0.0, 0.0, latency_s=1.0), 1980, 1) == pytest.approx(600.0)


def test_no_kind_of_busy_second_draws_more_than_the_board_limit() -> None:
    """Work that would draw more than the board's 700 W draws 700 W (the GPU's power brake): above the clock
    where idle + compute_w x (f / f_max) reaches the limit, compute-bound seconds cost the same at any clock,
    and the unlocked top clock is no different from one locked there."""
    p = PowerModel(100.0, 0.0, 900.0, 450.0, 1.0, 1.0, 1980, comm_w=0.0, latency_w=0.0)
    cap = p.cap_clock_mhz()
    assert cap == pytest.approx(1980 * 600.0 / 900.0)
    one_s = StepTime(1.0, 0.0, 0.0)
    for clock in (1400, 1600, 1980):
        assert p.step_energy_j(one_s, clock, 2) == pytest.approx(2 * 700.0), clock
    assert p.step_energy_j(one_s, 990, 2) == pytest.approx(2 * (100.0 + 450.0))
    # memory-bound power stays under the limit here: 100 + 450 W at the top clock
    assert p.step_energy_j(StepTime(0.0, 1.0, 0.0), 1980, 1) == pytest.approx(550.0)
    # a run's mean power is idle plus its busy seconds at their (capped) power
    busy = StepTime(2.0, 1.0, 0.5, comm_s=0.5)
    assert p.mean_w(busy, 10.0, 1980) == pytest.approx(100.0 + (2.0 * 600.0 + 1.0 * 450.0) / 10.0)
    assert PowerModel(100.0, 0.0, 500.0, 450.0, 1.0, 1.0, 1980).cap_clock_mhz() is None
