"""How the DynamoLLM characterization was run, and the characterization engine's KV cache and admission.

The requests the model replays for each characterization row (``measured.py``) are those of the
prototype's benchmark (467 / 1,010 / 4,085-token prompts, 96 / 256 / 600 ``max_tokens`` cut by Llama-2's
4,096-token context, seeded Poisson arrivals over 20 s); the engine is vLLM 0.3.0's V0 scheduler on a
KV cache sized from the H100's memory.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from tests.support import SHARED_DATA, needs_shared
from wattgate.profiles.classes import RequestType
from wattgate.servingmodel import fit
from wattgate.servingmodel.calibration import ServingModel, load_calibration
from wattgate.servingmodel.engine import H100_MEMORY_BYTES, Scheduler, kv_capacity_tokens
from wattgate.servingmodel.errors import ServingModelError
from wattgate.servingmodel.experiments import replay_run
from wattgate.servingmodel.fit import char_outcome
from wattgate.servingmodel.measured import (
    CHARACTERIZATION_CONTEXT_TOKENS,
    CharPoint,
    characterization_arrivals,
    characterization_output_tokens,
    read_characterization,
)

V0 = ServingModel("llama-2-70b", "dynamollm-2024")


def test_arrivals_are_the_benchmarks_seeded_draw_inside_its_window() -> None:
    """numpy's legacy generator, seed 100, re-seeded per point: the same gaps scaled by 1/rate at every load."""
    half = characterization_arrivals(0.5)
    assert len(half) == 12 and half[0] == pytest.approx(1.5679, abs=1e-3)
    assert all(0 < a < b < 20 for a, b in itertools.pairwise(half))
    assert characterization_arrivals(0.5) == half  # deterministic
    two = characterization_arrivals(2.0)
    assert len(two) == 41
    assert [4 * t for t in two[:11]] == pytest.approx(half[:11])  # same draws, a quarter of the gaps
    assert len(characterization_arrivals(9.0)) == 175
    with pytest.raises(ServingModelError):
        characterization_arrivals(0.0)


def test_the_long_prompt_leaves_room_for_the_same_few_tokens_whatever_max_tokens_says() -> None:
    assert characterization_output_tokens(467, 600) == 600
    assert characterization_output_tokens(1010, 256) == 256
    assert {characterization_output_tokens(4085, m) for m in (96, 256, 600)} == {CHARACTERIZATION_CONTEXT_TOKENS - 4085}
    ll = CharPoint(2, 1980, RequestType.parse("LL"), 1.0, 1.0, 1000.0)
    assert (ll.input_tokens, ll.output_tokens) == (4085, 11)
    sl = CharPoint(2, 1980, RequestType.parse("SL"), 1.0, 1.0, 1000.0)
    assert (sl.input_tokens, sl.output_tokens) == (467, 600)


@needs_shared("profiles")
def test_measured_ls_lm_ll_rows_agree_as_capped_outputs_imply_and_the_model_agrees() -> None:
    """The evidence for the cap: at every TP, clock and load the three long-prompt types read the same P99
    TTFT and power (within measurement noise), where S and M prompts differ by output; the model, given the
    benchmark's requests, replays the three identically."""
    rows = read_characterization(SHARED_DATA / "profiles")
    by = {(p.tp, p.clock_mhz, p.load_rps, p.rtype.name): p for p in rows}
    spread_l, spread_s = [], []
    for (tp, clock, load, name), p in by.items():
        if name == "LS" and (tp, clock, load, "LM") in by:
            lm = by[(tp, clock, load, "LM")]
            spread_l.append(abs(lm.power_w / p.power_w - 1))
        if name == "SS" and (tp, clock, load, "SL") in by:
            spread_s.append(abs(by[(tp, clock, load, "SL")].power_w / p.power_w - 1))
    spread_l.sort()
    spread_s.sort()
    assert spread_l[len(spread_l) // 2] < 0.02 < 0.05 < spread_s[len(spread_s) // 2]
    outs = [char_outcome(V0, by[(2, 1980, 1.0, t)]) for t in ("LS", "LM", "LL")]
    assert outs[0] == outs[1] == outs[2]


def test_kv_capacity_of_the_characterization_engine_at_tp2() -> None:
    """vLLM 0.3.0: total x 0.9 less the weights and the profiling pass's other memory, in 16-token blocks."""
    engine = V0.engine(2)
    cfg = engine.config
    assert cfg.gpu_memory_bytes == H100_MEMORY_BYTES == 85_520_809_984
    assert cfg.scheduler is Scheduler.V0 and (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (256, 4096)
    per_token = 2 * 80 * (8 // 2) * 128 * 2  # K and V, 80 layers, 4 of 8 KV heads, head 128, fp16
    free = 0.9 * H100_MEMORY_BYTES - 68.98e9 * 2 / 2 - cfg.reserved_bytes_per_gpu
    expected = int(free // per_token) // 16 * 16
    assert engine.capacity_tokens == kv_capacity_tokens(engine.cost, cfg) == expected
    # the calibrated reserve leaves room for a handful of long-prompt requests (4,096 tokens each)
    assert 3 * 4096 <= engine.capacity_tokens < 8 * 4096


def test_v0_admits_long_prompts_one_per_step_while_the_cache_has_room_and_never_preempts_them() -> None:
    """Eight 4,085-token prompts at once on TP2: one prefill per 4,096-token step, as many as vLLM's block
    manager admits (256 blocks each, 1% of the blocks kept free as a watermark), the rest wait in order until
    a finished request frees its blocks; 11 tokens each never outgrow what admission set aside, so nothing
    is preempted."""
    engine = V0.engine(2)
    blocks = engine.capacity_tokens // 16
    fits = (blocks - int(0.01 * blocks)) // 256  # vLLM 0.3.0's can_allocate, request after request
    assert 3 <= fits < 8
    for k in range(8):
        engine.submit(str(k), 4085, 11, 0.0)
    engine.advance(1e-9)
    engine.advance(engine.next_event_s() or 0.0)  # the first prefill step
    assert engine.running == 1 and engine.waiting == 7
    for _ in range(fits + 2):  # prefill-first: the next steps prefill until the cache refuses one
        engine.advance(engine.next_event_s() or 0.0)
        assert engine.running <= fits
    assert engine.running == fits and engine.waiting == 8 - fits
    engine.advance(1e6, stop_when_idle=True)
    finished = sorted(engine.pop_finished(), key=lambda f: f.ttft_s)
    assert len(finished) == 8 and all(f.preemptions == 0 for f in finished)
    assert [f.id for f in finished] == [str(k) for k in range(8)]  # first come, first served
    assert engine.totals.preemptions == 0


def test_v0_preempts_the_newest_request_by_recompute_when_decodes_outgrow_the_cache() -> None:
    """Long outputs on short prompts: admission only checks the prompt, so decodes fill the cache and the
    newest running request is preempted (its cache freed, recomputed when readmitted); every request ends."""
    engine = V0.engine(2)
    out = replay_run(engine, [0.01 * k for k in range(1, 61)], 467, 600)
    assert out.requests == 60 and engine.totals.preemptions > 0


def test_calibrated_reserve_is_one_figure_for_both_engines() -> None:
    cal = load_calibration()
    reserves = {e.config.reserved_bytes_per_gpu for e in cal.engines.values()}
    assert len(reserves) == 1
    (reserve,) = reserves
    assert 1 * 2**30 < reserve < 8 * 2**30
    assert "every type" in cal.provenance["fits"]["KV reserve"]["data"]


def test_kernel_scale_stretches_every_kernel_but_not_the_overheads() -> None:
    """An older engine's slower kernels: ``kernel_scale`` multiplies the compute-, memory-bound, all-reduce and
    latency-bound seconds of every step; the per-step and per-request overheads stay as they are."""
    cal = load_calibration()
    v0 = cal.engines["dynamollm-2024"]
    assert 1.0 < v0.overheads.kernel_scale < 2.0  # fitted: the 2024 engine ran slower than vLLM 0.24's kernels
    assert cal.engines["vllm-v1"].overheads.kernel_scale == 1.0

    def lone(scale: float) -> tuple[float, float]:
        o = dataclasses.replace(v0.overheads, kernel_scale=scale, request_s=0.0)
        model = ServingModel("llama-2-70b", "dynamollm-2024", fit._with_overheads(cal, "dynamollm-2024", o))
        engine = model.engine(4)
        out = replay_run(engine, [1.0], 1010, 256)
        t = engine.totals
        return out.ttft_mean_s, t.compute_s + t.memory_s + t.comm_s + t.latency_s

    (ttft1, busy1), (ttft2, busy2) = lone(1.0), lone(2.0)
    assert busy2 == pytest.approx(2 * busy1, rel=1e-9)
    assert 1.5 * ttft1 < ttft2 < 2 * ttft1  # the prefill's overheads do not double


def test_characterization_power_leaves_out_the_idle_wait_before_the_first_request() -> None:
    """The prototype averaged DCGM samples from the first one above 140 W: the modelled window starts at the
    first arrival, and the energy left out is exactly the idle engine's draw until then."""
    model = ServingModel("llama-2-70b", "dynamollm-2024")
    whole = replay_run(model.engine(2), [10.0, 12.0], 467, 96)
    busy = replay_run(model.engine(2), [10.0, 12.0], 467, 96, from_first_arrival=True)
    assert whole.duration_s == pytest.approx(busy.duration_s + 10.0)
    assert whole.idle_s == pytest.approx(busy.idle_s + 10.0)
    idle_j = model.calibration.power.idle_gpu_w(1980) * 2 * 10.0
    assert whole.power_w * whole.duration_s == pytest.approx(busy.power_w * busy.duration_s + idle_j)
    assert busy.power_w > whole.power_w and busy.ttft_p99_s == whole.ttft_p99_s
    ls = CharPoint(2, 1980, RequestType.parse("LS"), 0.5, 1.0, 1000.0)
    out = char_outcome(model, ls)
    assert ls.arrivals()[-1] - ls.arrivals()[0] < out.duration_s < 20.0  # from the first arrival, not from 0
