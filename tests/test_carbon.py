"""The carbon intensity, a number or a series of hourly values: one parser and look-up for the gateway (each second at
the intensity of its wall-clock hour) and ``wattgate simulate`` (hours from the trace's start); bad input stops the
command at start-up with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattgate.carbon import CarbonError, CarbonIntensity, constant, parse_carbon
from wattgate.cli import main

MONDAY = 1_796_601_600.0  # 2026-12-07 00:00 UTC, a Monday


def test_a_number_is_a_constant_and_a_file_is_an_hourly_series(tmp_path: Path) -> None:
    assert parse_carbon("475") == constant(475.0) and parse_carbon(12) == constant(12.0)
    assert parse_carbon("475").grams(3.6e6, 0.0) == pytest.approx(475.0)
    day = tmp_path / "day.csv"
    day.write_text("# gCO2e/kWh by UTC hour\n" + "\n".join(f"{100 + h}, " for h in range(23)) + "\n123 # last\n")
    series = parse_carbon(str(day))
    assert len(series.hourly_g_per_kwh) == 24 and not series.constant and series.show() == str(day)
    assert series.at(MONDAY) == 100.0 and series.at(MONDAY + 5.5 * 3600) == 105.0  # 05:30 UTC: hour 5
    assert series.at(MONDAY + 86400 + 23 * 3600) == 123.0  # cycled: every day alike
    week = CarbonIntensity(tuple(float(h) for h in range(168)))
    assert week.at(MONDAY) == 0.0 and week.at(MONDAY + 2 * 86400 + 3600) == 49.0  # Wednesday 01:00 UTC
    assert series.at_hour(25) == 101.0  # simulate: hours from the trace's start


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("100\n200\nabc\n", "line 3: 'abc' is not a number"),
        ("100\n-5\n", "line 2: intensities must be numbers >= 0"),
        ("100,nan\n", "line 1: intensities must be numbers >= 0"),
        ("# only a comment\n", "holds no intensity"),
    ],
)
def test_malformed_series_are_refused_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "carbon.csv"
    f.write_text(content)
    with pytest.raises(CarbonError, match=message):
        parse_carbon(str(f))


def test_missing_file_and_negative_number_are_refused() -> None:
    with pytest.raises(CarbonError, match="no such file"):
        parse_carbon("/nonexistent/carbon.csv")
    with pytest.raises(CarbonError, match=">= 0"):
        parse_carbon("-1")


def test_the_gateway_stops_at_start_up_on_a_bad_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("300\nthree hundred\n")
    for value, message in ((str(bad), "line 2"), (str(tmp_path / "none.csv"), "no such file")):
        assert main(["gateway", "--energy-carbon-g-per-kwh", value, "--print-settings"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wattgate gateway: error: --energy-carbon-g-per-kwh:") and message in err
        assert "Traceback" not in err
    good = tmp_path / "good.csv"
    good.write_text("300\n400\n")
    assert main(["gateway", "--energy-carbon-g-per-kwh", str(good), "--print-settings"]) == 0
    assert f'"value": "{good}"' in capsys.readouterr().out
