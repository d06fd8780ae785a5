"""``wattgate profile --sim`` end to end: it recovers the emulator's own profile; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent import simprofiles
from tests.agent.simsupport import serve_sim
from wattgate.cli import main
from wattgate.profiles.table import load_profile

# Stated recovery error of `wattgate profile --sim` (README): P99 TTFT 12 %, P99 TBT 8 %, power 10 %.
TOL = {"ttft": 0.12, "tbt": 0.08, "power": 0.10}


def test_profile_sim_recovers_the_emulated_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = simprofiles.write_small_profile(tmp_path / "given.json")
    out = tmp_path / "measured.json"
    args = ["profile", "--sim", "--profile", str(src), "--tps", "2", "--clocks", "800,1980", "--loads", "1,2"]
    args += ["--types", "SS,MM", "--speed", "20", "--warmup-s", "10", "--duration-s", "30", "--out", str(out)]
    assert main(args) == 0
    measured = load_profile(out)
    doc = json.loads(out.read_text())
    assert doc["provenance"]["timing"].startswith("engine-reported modelled")
    assert measured.model == "tiny-test" and measured.tps == (2,)
    assert len(doc["rows"]) == 8
    worst = {"ttft": 0.0, "tbt": 0.0, "power": 0.0}
    for tp, clock, rtype, load, ttft, tbt, power in doc["rows"]:
        errs = {
            "ttft": ttft / simprofiles.ttft(clock, rtype, load) - 1,
            "tbt": tbt / simprofiles.tbt(clock, rtype, load) - 1,
            "power": power / simprofiles.power(tp, clock, load) - 1,
        }
        for k, e in errs.items():
            worst[k] = max(worst[k], abs(e))
    assert all(worst[k] <= TOL[k] for k in TOL), worst
    table = capsys.readouterr().out
    assert "ttft_p99_s(modelled)" in table and table.count("\n") == 9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clocks", "1234", "--loads", "1", "--types", "SS"], "cannot lock 1234 MHz"),
        (["--clocks", "800", "--loads", "1", "--types", "XX"], "unknown request type"),
        (["--clocks", "800", "--loads", "fast", "--types", "SS"], "--loads must be"),
    ],
)
def test_profile_sim_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    src = simprofiles.write_small_profile(tmp_path / "given.json")
    args = ["profile", "--sim", "--profile", str(src), "--tps", "2", "--speed", "50", "--warmup-s", "1"]
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
        args += ["--warmup-s", "5", "--duration-s", "10", "--timing", "client", "--out", str(out)]
        assert main(args) == 0
        assert srv.gpus[0].locked_sm_clock_mhz() is None  # reset after the sweep
    doc = json.loads(out.read_text())
    assert doc["provenance"]["timing"] == "client timers (measured)" and doc["model"] == "tiny-test"
    [[tp, clock, rtype, load, ttft, tbt, power]] = doc["rows"]
    # client timers include the HTTP round trip and scheduling delays: lower bounds only (never faster than modelled)
    assert ttft >= 0.8 * simprofiles.ttft(clock, rtype, load) and tbt >= 0.8 * simprofiles.tbt(clock, rtype, load)
    assert power == pytest.approx(simprofiles.power(tp, clock, load), rel=0.1)


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
