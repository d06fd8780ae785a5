"""``wattgate profile --sim`` end to end: it recovers the emulator's own profile; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent import simprofiles
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
