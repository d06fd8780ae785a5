"""``wattgate profile``: with ``--sim`` it measures what the serving model gives offline; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.agent.simsupport import ARCH, ENGINE, serve_sim
from wattgate.agent.profiler import INPUT_TOKENS, OUTPUT_TOKENS
from wattgate.cli import main
from wattgate.profiles.classes import RequestType
from wattgate.profiles.table import load_profile
from wattgate.servingmodel.calibration import ServingModel

# Stated recovery error of `wattgate profile --sim` with evenly spaced arrivals (README): against the serving
# model run offline on the same arrivals, P99 TTFT 10 %, P99 TBT 5 %, power 5 %.
TOL = {"ttft": 0.10, "tbt": 0.05, "power": 0.05}
WARMUP_S, DURATION_S = 5.0, 20.0


def offline_point(
    tp: int, clock: int, rtype: str, load: float, warmup_s: float = WARMUP_S, duration_s: float = DURATION_S
) -> tuple[float, float, float]:
    """What the profiler measures at one point, from the serving model run offline: arrivals every 1/load s
    for warm-up + duration, P99 TTFT and P99 TPOT of the requests that arrive after the warm-up, and the
    instance's mean power over the measured window."""
    rt = RequestType.parse(rtype)
    engine = ServingModel(ARCH, ENGINE).engine(tp, clock_mhz=clock)
    end = warmup_s + duration_s
    arrivals = [k / load for k in range(1, int(end * load) + 1) if k / load < end]
    e0 = None
    for k, at in enumerate(arrivals):
        if e0 is None and at >= warmup_s:
            engine.advance(warmup_s)
            e0 = engine.energy_j_at(warmup_s)
        engine.advance(at)
        engine.submit(str(k), INPUT_TOKENS[rt.input], OUTPUT_TOKENS[rt.output], at)
    engine.advance(end)
    assert e0 is not None
    power = (engine.energy_j_at(end) - e0) / duration_s
    engine.advance(float("inf"), stop_when_idle=True)
    done = [f for f in engine.pop_finished() if f.arrival_s >= warmup_s]
    ttft = float(np.percentile([f.ttft_s for f in done], 99))
    tpot = float(np.percentile([f.tpot_s for f in done if f.tpot_s is not None], 99))
    return ttft, tpot, power


def test_profile_sim_measures_what_the_serving_model_gives_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "measured.json"
    args = ["profile", "--sim", "--arch", ARCH, "--engine", ENGINE, "--model", "tiny-test", "--tps", "2"]
    # Short prompts: a client that this busy machine stalls sends a few requests at once, and their prompts
    # still prefill in one step, so the tail it measures is the model's, not the machine's.
    args += ["--clocks", "800,1980", "--loads", "2", "--types", "SS,SM", "--arrivals", "uniform", "--speed", "5"]
    args += ["--warmup-s", str(WARMUP_S), "--duration-s", str(DURATION_S), "--out", str(out)]
    assert main(args) == 0
    measured = load_profile(out)
    doc = json.loads(out.read_text())
    assert doc["provenance"]["timing"].startswith("engine-reported modelled")
    assert ARCH in doc["provenance"]["engine"] and ENGINE in doc["provenance"]["engine"]
    assert measured.model == "tiny-test" and measured.tps == (2,)
    assert len(doc["rows"]) == 4
    worst = {"ttft": 0.0, "tbt": 0.0, "power": 0.0}
    for tp, clock, rtype, load, ttft, tbt, power in doc["rows"]:
        want = dict(zip(("ttft", "tbt", "power"), offline_point(tp, clock, rtype, load), strict=True))
        got = {"ttft": ttft, "tbt": tbt, "power": power}
        for k, w in worst.items():
            worst[k] = max(w, abs(got[k] / want[k] - 1))
    assert all(worst[k] <= TOL[k] for k in TOL), worst
    table = capsys.readouterr().out
    assert "ttft_p99_s(modelled)" in table and table.count("\n") == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clocks", "1234", "--loads", "1", "--types", "SS"], "cannot lock 1234 MHz"),
        (["--clocks", "800", "--loads", "1", "--types", "XX"], "unknown request type"),
        (["--clocks", "800", "--loads", "fast", "--types", "SS"], "--loads must be"),
        (["--clocks", "800", "--loads", "1", "--arch", "gpt-5"], "--arch: expected one of llama-2-70b"),
        (["--clocks", "800", "--loads", "1", "--tps", "1"], "llama-3.1-70b does not fit TP1"),
    ],
)
def test_profile_sim_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["profile", "--sim", "--tps", "2", "--speed", "50", "--warmup-s", "1"]
    args += ["--duration-s", "2", "--out", str(tmp_path / "o.json"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_profile_without_sim_needs_an_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "--clocks", "800", "--loads", "1", "--out", str(tmp_path / "o.json")]
    assert main(args) == 2
    assert "--url" in capsys.readouterr().err


def test_profile_an_existing_engine_with_client_timers(tmp_path: Path) -> None:
    """``--url`` mode: the engine is already running (here a sim-backend on shared simulated GPUs)."""
    out = tmp_path / "m.json"
    with serve_sim(speed=5, window_s=5, state_dir=tmp_path / "gpus") as srv:
        args = ["profile", "--url", srv.url, "--gpu-kind", "simulated", "--gpu-state-dir", str(tmp_path / "gpus")]
        args += ["--tps", "2", "--gpus", "0,1", "--clocks", "1400", "--loads", "2", "--types", "SS", "--speed", "5"]
        args += ["--warmup-s", "5", "--duration-s", "10", "--timing", "client", "--arrivals", "uniform"]
        args += ["--out", str(out)]
        assert main(args) == 0
        assert srv.gpus[0].locked_sm_clock_mhz() is None  # reset after the sweep
    doc = json.loads(out.read_text())
    assert doc["provenance"]["timing"] == "client timers (measured)" and doc["model"] == "tiny-test"
    [[tp, clock, rtype, load, ttft, tbt, power]] = doc["rows"]
    want_ttft, want_tbt, want_power = offline_point(tp, clock, rtype, load, 5.0, 10.0)
    # client timers include the HTTP round trip and scheduling delays: lower bounds only (never faster than modelled)
    assert ttft >= 0.9 * want_ttft and tbt >= 0.9 * want_tbt
    assert power == pytest.approx(want_power, rel=TOL["power"])


def test_profile_reports_a_gpu_that_refuses_the_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Permission injection: the GPU seam raises GpuPermissionError; the profiler says so and resets the clocks."""
    with serve_sim(speed=20, state_dir=tmp_path / "gpus") as srv:
        srv.gpus[1].inject_fault("lock", "permission")
        args = ["profile", "--url", srv.url, "--gpu-kind", "simulated", "--gpu-state-dir", str(tmp_path / "gpus")]
        args += ["--tps", "2", "--clocks", "1400", "--loads", "1", "--types", "SS", "--out", str(tmp_path / "o.json")]
        assert main(args) == 2
        assert srv.gpus[0].locked_sm_clock_mhz() is None  # GPU 0 had been locked: reset on the way out
    err = capsys.readouterr().err
    assert "cannot lock 1400 MHz" in err and "injected permission fault" in err
    assert not (tmp_path / "o.json").exists()
