"""The shipped profile against its sources: readings of the CSVs, the TBT model, the TBT target, a rebuild."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import numpy as np
import pytest

from tests.support import SHARED_DATA, needs_shared
from wattgate.profiles.build import Sources, build_llama2_70b_h100, build_tbt_model
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import ClassEdges, RequestType, SloTargets
from wattgate.profiles.derive import (
    CharPoint,
    DeriveError,
    TbtModel,
    decode_batch,
    fit_clock_alpha,
    read_characterization,
    read_token_times,
    unloaded_tbt_s,
)

DATA = SHARED_DATA / "profiles"
pytestmark = needs_shared("profiles")


def _csv(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def points() -> list[CharPoint]:
    return read_characterization(DATA)


@pytest.fixture(scope="module")
def model() -> TbtModel:
    return build_tbt_model(Sources.under(DATA))


def test_rebuild_reproduces_the_shipped_file_row_for_row() -> None:
    doc = build_llama2_70b_h100(Sources.under(DATA))
    shipped = load_builtin().to_document()
    assert doc["rows"] == shipped["rows"]
    assert doc["provenance"] == shipped["provenance"]


@pytest.mark.parametrize("index", [0, 1, 17, 400, 777, 1200, 1350])
def test_spot_rows_power_is_energy_x10_and_ttft_is_performance(index: int) -> None:
    e, p = _csv("characterization_energy.csv")[index], _csv("characterization_performance.csv")[index]
    rtype = RequestType.parse(e["request_type"])
    point = load_builtin().lookup(int(e["parallelization_strategy"][2:]), int(e["frequency"]), rtype, float(e["load"]))
    assert point.power_w == pytest.approx(float(e["energy"]) * 10, rel=1e-12)
    assert point.ttft_p99_s == float(p["performance"])


def test_energy_times_ten_is_per_gpu_power_within_the_dcgm_range(points: list[CharPoint]) -> None:
    # jovan_vllm_benchs: Llama-3-70B, TP8 on H100, DCGM power per GPU. Energy x 10 / TP lands inside
    # [lowest P50, highest P99] of those readings at every point; energy x 1 would be below every
    # reading (under H100 idle), energy x 100 above the 700 W board limit.
    rows = _csv("jovan_vllm_benchs/llama70b_h100.csv")
    low = min(float(r["P50_POWINST"]) for r in rows)
    high = max(float(r["P99_POWINST"]) for r in rows)
    per_gpu = [p.power_w / p.tp for p in points]
    assert low <= min(per_gpu) and max(per_gpu) <= high
    assert max(p.energy / p.tp for p in points) < low
    assert min(p.energy * 100 / p.tp for p in points) > 700


def test_performance_reads_as_ttft_seconds(points: list[CharPoint]) -> None:
    # At the lowest load and max clock, TTFT should be prefill of a long-tail prompt plus a little
    # queueing: compare with perf_model's batch-1 prefill time (ms -> s) at the P99 input length of the
    # input class in the conv trace. Ratios fall in [0.8, 3]; a ms reading would be 1000x off.
    edges = ClassEdges()
    inputs: dict[str, list[int]] = {"S": [], "M": [], "L": []}
    with (DATA.parent / "traces" / "AzureLLMInferenceTrace_conv.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            n = int(r["ContextTokens"])
            inputs[edges.input_class(n).value].append(n)
    prefill: dict[int, dict[int, list[float]]] = {}
    for r in _csv("perf_model.csv"):
        if (r["model"], r["hardware"], r["batch_size"], r["token_size"]) == ("llama2-70b", "h100-80gb", "1", "128"):
            by_size = prefill.setdefault(int(r["tensor_parallel"]), {})
            by_size.setdefault(int(r["prompt_size"]), []).append(float(r["prompt_time"]) / 1000)
    checked = 0
    for p in points:
        if p.load_rps != 0.5 or p.clock_mhz != 1980:
            continue
        sizes = sorted(inputs[p.rtype.input.value])
        p99_tokens = sizes[int(0.99 * len(sizes))]
        xs = sorted(prefill[p.tp])
        ys = [statistics.median(prefill[p.tp][x]) for x in xs]
        prefill_s = float(np.interp(p99_tokens, xs, ys))
        assert 0.5 <= p.performance / prefill_s <= 3.0, (p, prefill_s)
        checked += 1
    assert checked == 27


def test_tbt_model_reproduces_perf_model_at_max_clock(model: TbtModel) -> None:
    rows = [r for r in _csv("perf_model.csv") if r["model"] == "llama2-70b" and r["hardware"] == "h100-80gb"]
    mm = RequestType.parse("MM")  # mean input 905 tokens: context factor within 2% of the 512-token sweep
    for tp, curve in model.curves.items():
        for batch in curve.batches:
            times = [
                float(r["token_time"]) / 1000
                for r in rows
                if (int(r["tensor_parallel"]), int(r["batch_size"]), r["prompt_size"], r["token_size"])
                == (tp, batch, "512", "128")
            ]
            assert model.step_s(tp, mm, 1980, batch) == pytest.approx(statistics.median(times), rel=0.02)


def test_perf_model_power_capped_rows_bound_the_clock_exponent_from_below(model: TbtModel) -> None:
    # splitwise-sim's h100-80gb-pcap rows (a power cap, so lower clocks) keep token_time unchanged and
    # scale prompt_time by 1.3: they assume decode does not slow with the clock (alpha = 0). Our alpha,
    # fitted on the characterization's TTFT, is the conservative upper end; both bounds are stated.
    rows = [r for r in _csv("perf_model.csv") if r["model"] == "llama2-70b"]
    base = [r for r in rows if r["hardware"] == "h100-80gb"]
    capped = [r for r in rows if r["hardware"] == "h100-80gb-pcap"]
    assert len(capped) == len(base) == 315
    fields = ("tensor_parallel", "prompt_size", "batch_size", "token_size")
    for b, c in zip(base, capped, strict=True):
        assert tuple(b[f] for f in fields) == tuple(c[f] for f in fields)
        assert float(c["token_time"]) == pytest.approx(float(b["token_time"]), rel=1e-9)
        assert float(c["prompt_time"]) / float(b["prompt_time"]) == pytest.approx(1.3, abs=0.01)
    assert 0.4 < model.alpha < 0.9


def test_clock_exponent_is_the_median_of_the_measured_ttft_ratios(points: list[CharPoint], model: TbtModel) -> None:
    alpha = fit_clock_alpha(points)
    assert alpha == model.alpha
    assert round(alpha, 4) == load_builtin().provenance["tbt_p99_s"]["alpha"]
    ss = RequestType.parse("SS")
    ratio = model.step_s(8, ss, 800, 8) / model.step_s(8, ss, 1980, 8)
    assert ratio == pytest.approx((1980 / 800) ** alpha)


def test_little_law_batch_is_a_fixed_point_or_the_cap(model: TbtModel) -> None:
    for tp, rtype_name, clock, load in [(8, "SS", 1980, 9.0), (4, "LL", 1200, 1.5), (2, "SM", 800, 5.0)]:
        rtype = RequestType.parse(rtype_name)
        batch = model.batch(tp, rtype, clock, load)
        demand = load * model.lengths[rtype].output_tokens * model.step_s(tp, rtype, clock, batch)
        cap = model.curves[tp].batches[-1]
        assert batch == pytest.approx(min(cap, demand), rel=1e-6)
    assert model.batch(2, RequestType.parse("SM"), 800, 5.0) == 32  # overloaded: capped, TTFT shows the queue


def test_decode_step_rise_with_batch_matches_vllm_tpot_at_tp8(model: TbtModel) -> None:
    # Shape check on other data: Llama-3-70B TP8 on H100 (input 1024, output 350). Its batch by
    # Little's law from measured P50 TPOT; the rise of TPOT over the lowest rate agrees with our
    # Llama-2-70B step-time curve within 10% while the batch stays within perf_model's 64.
    rows = _csv("jovan_vllm_benchs/llama70b_h100.csv")
    base_batch = float(rows[0]["RequestRate"]) * 350 * float(rows[0]["P50_TPOT"]) / 1000
    mm = RequestType.parse("MM")
    checked = 0
    for r in rows[1:]:
        batch = float(r["RequestRate"]) * 350 * float(r["P50_TPOT"]) / 1000
        if batch > 64:
            continue
        measured = float(r["P50_TPOT"]) / float(rows[0]["P50_TPOT"])
        modelled = model.step_s(8, mm, 1980, batch) / model.step_s(8, mm, 1980, base_batch)
        assert modelled == pytest.approx(measured, rel=0.10)
        checked += 1
    assert checked == 3


def test_default_tbt_target_is_five_times_unloaded_tp8(model: TbtModel) -> None:
    unloaded = unloaded_tbt_s(model.curves, 8)
    assert unloaded == pytest.approx(0.02976, abs=1e-5)
    assert round(5 * unloaded, 2) == SloTargets().tbt_p99_s == 0.15


def test_decode_batch_without_load_is_one() -> None:
    assert decode_batch(0.0, 100, lambda b: 0.03, cap=64) == 1.0


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DeriveError, match="cannot read"):
        read_characterization(tmp_path)
    (tmp_path / "characterization_energy.csv").write_text(
        "load,parallelization_strategy,frequency,request_type,energy\n0.5,TP8,800,SS,1\n"
    )
    (tmp_path / "characterization_performance.csv").write_text(
        "load,parallelization_strategy,frequency,request_type,performance\n0.5,TP8,1000,SS,1\n"
    )
    with pytest.raises(DeriveError, match="keys differ"):
        read_characterization(tmp_path)
    (tmp_path / "perf_model.csv").write_text("model,hardware\nbloom-176b,a100-80gb\n")
    with pytest.raises(DeriveError, match="no llama2-70b on h100-80gb rows"):
        read_token_times(tmp_path / "perf_model.csv")
