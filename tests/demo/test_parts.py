"""The demo's pure parts: trace schedule (compression with thinning), the modelled baseline, the live view."""

from __future__ import annotations

import io
import math

from wattgate.demo.replay import Progress, Prompts, Result
from wattgate.demo.report import baseline, build_report, engine_meets_slo, fleet_baseline, meets_slo, render
from wattgate.demo.trace import Scheduled, read_trace, schedule
from wattgate.demo.view import View, screen
from wattgate.planner.greedy import IDLE_GPU_W, SINGLE_POOL_TP, single_pool
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import ClassEdges, RequestType, SloTargets


def test_shipped_excerpt_and_thinning_keep_the_traces_rate() -> None:
    rows = read_trace(None)
    assert len(rows) == 2867 and rows[0].at_s == 0.0 and rows[-1].at_s < 600
    for speed in (1.0, 4.0):
        sched = schedule(rows, 100.0, speed, ClassEdges(), max_output_tokens=50)
        assert all(0 <= r.send_at_s < 100 and r.output_tokens <= 50 for r in sched)
        in_span = sum(r.at_s < 100.0 * speed for r in rows)  # the trace's own requests in the replayed span
        assert math.isclose(len(sched), in_span / speed, rel_tol=0.1)
    long = schedule(rows, 200.0, 4.0, ClassEdges())  # 800 s of a 600 s trace: wraps
    assert long[-1].trace_at_s > 600


def test_baseline_sizes_tp8_instances_for_the_load_and_counts_idle_gpus() -> None:
    p, slo = load_builtin(), SloTargets()
    mm = RequestType.parse("MM")
    quiet = single_pool(p, {mm: 0.5}, slo, gpus=16, mix={mm: 1.0})
    one_instance_rps = p.max_load(SINGLE_POOL_TP, 1980, mm, slo)
    busy = single_pool(p, {mm: 2.5 * one_instance_rps}, slo, gpus=16, mix={mm: 1.0})
    assert quiet.instances == 1 and busy.instances >= 3
    assert quiet.power_w > (16 - SINGLE_POOL_TP) * IDLE_GPU_W
    assert busy.power_w > quiet.power_w
    idle = single_pool(p, {}, slo, gpus=16, mix={mm: 1.0})
    assert idle.instances == 1  # the baseline keeps one instance warm
    assert mm in quiet.meets and mm in busy.meets  # as few instances as meet the SLO: they do
    rate = 2.5 * one_instance_rps
    sched = [Scheduled(t / rate, t / rate, 500, 200, mm) for t in range(int(20 * rate))]  # busy's load for 20 s
    b = baseline(p, sched, 30.0, slo, gpus=16)
    assert b.max_instances == busy.instances and b.attainment == 1.0
    assert b.energy_j > 20 * busy.power_w


def test_prompts_are_fitted_to_the_gateways_token_count() -> None:
    prompts = Prompts("llama-3.1-70b")
    for n in (50, 408, 409, 1109, 1110, 4000):
        assert prompts.counted(prompts.get(n)) == n
    assert prompts.get(409) is prompts.get(409)  # fitted once


def test_client_and_engine_attainment_are_judged_apart() -> None:
    slo, ss = SloTargets(), RequestType.parse("SS")
    req = Scheduled(0.0, 0.0, 100, 50, ss)
    # the engine made its first token in 0.2 s (modelled) but the client saw it after 0.3 s (measured)
    late = Result(req, True, 0.3, 0.05, 50, engine={"ttft_s": 0.2, "tbt_mean_s": 0.05})
    assert engine_meets_slo(late, slo) and not meets_slo(late, slo)
    failed = Result(req, False, None, None, 0, "HTTP 503")
    assert not engine_meets_slo(failed, slo) and not meets_slo(failed, slo)


def test_view_in_place_on_a_tty_and_lines_otherwise() -> None:
    data = {
        "rps": 2.5,
        "power_w": 3000.0,
        "power_source": ["modelled"],
        "nodes": [{"node": "node1", "power_w": 3000.0}],
        "instances": [{"pool": "SM", "tp": 2, "sm_clock_mhz": 1200, "state": "ready"}],
        "pools": {"SM": {"requests": 4, "slo_attainment": 0.75}},
        "plan": {"version": 3, "gpus": 2, "predicted_power_w": 900.0, "baseline_power_w": 9000.0},
    }
    text = screen(data, Progress(total=10, sent=5, done=4), 30.0, 60.0, "http://127.0.0.1:8080")
    assert "TP2@1200MHz" in text and "75.0%" in text and "#" * 15 in text and "(modelled)" in text

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for t in (0.0, 1.0, 2.0, 6.0):
        View(tty).update(data, Progress(total=10), t, 60.0, "u")
    v = View(pipe)
    for t in (0.0, 1.0, 2.0, 6.0):
        v.update(data, Progress(total=10), t, 60.0, "u")
    assert tty.getvalue().count("\x1b[H\x1b[2J") == 4
    assert len(pipe.getvalue().splitlines()) == 2


def test_the_report_names_the_baseline_it_compares_with() -> None:
    """The single-pool baseline by default; with --external the fixed-fleet baseline (the same engines at the
    highest clock): every line of the report says which, so a saving is never read against the wrong one."""
    p, slo = load_builtin(), SloTargets()
    mm = RequestType.parse("MM")
    sched = [Scheduled(t / 2, t / 2, 500, 200, mm) for t in range(40)]
    results = [Result(r, True, 0.1, 0.02, 200) for r in sched]
    for base, name, other in (
        (baseline(p, sched, 20.0, slo, gpus=16), "single-pool baseline", "fixed-fleet"),
        (fleet_baseline(p, sched, 20.0, slo, [4, 4]), "fixed-fleet baseline", "single-pool"),
    ):
        rep = build_report(results, scheduled=len(sched), energy_j=0.5 * base.energy_j, base=base, elapsed_s=20.0)
        assert rep["energy"]["baseline"] == rep["slo"]["baseline"] == name
        text = render(rep)
        assert f"energy, {name}:" in text and f"saving vs the {name}: 50.0% (modelled)" in text, text
        assert other not in text
