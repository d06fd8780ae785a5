"""``wattgate simulate`` end to end: table, JSON, plots, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wattgate.cli import main


def trace(path: Path, seconds: int = 300) -> Path:
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for k in range(seconds):
        rows.append(
            f"2023-11-16 18:{15 + k // 60:02d}:{k % 60:02d}.1234567,{[200, 900, 2000][k % 3]},{[30, 200][k % 2]}"
        )
    path.write_bytes("\r\n".join(rows).encode())
    return path


def test_json_report_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            str(trace(tmp_path / "t.csv")),
            "--policies",
            "single-pool,scale-freq",
            "--gpus",
            "32",
            "--json",
            "--out",
            str(out),
            "--carbon-g-per-kwh",
            "100",
            "--gpu-hour-price",
            "3",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["figures"].startswith("modelled")
    base, freq = doc["policies"]
    assert base["policy"] == "single-pool" and base["energy_vs_baseline"] == 0.0
    assert freq["energy_kwh"] < base["energy_kwh"]
    assert base["carbon_kg"] == pytest.approx(base["energy_kwh"] * 0.1)
    assert base["cost"] == pytest.approx(base["gpu_hours"] * 3 + base["energy_kwh"] * 0.10)
    assert set(base["per_type"]) <= {"SS", "SM", "MS", "MM", "LS", "LM"}
    for name in ("report.json", "power.png", "slo.png", "energy_by_pool.png"):
        assert (out / name).stat().st_size > 0


def test_table_says_the_figures_are_modelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(trace(tmp_path / "t.csv", 120)), "--policies", "single-pool", "--gpus", "16"]) == 0
    text = capsys.readouterr().out
    assert "modelled (serving model), not measured" in text and "single-pool" in text
    assert "sized iso-SLO for 99% of requests within their targets" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "magic"], "unknown policy"),
        (["--speed", "0"], "--speed"),
        (["--confusion", "[[1,2]]"], "confusion matrix"),
        (["--profile", "nope"], "neither a builtin profile"),
        (["--gpus", "4"], "--gpus"),
        (["--headroom", "0"], "--headroom"),
        (["--headroom", "1.2"], "--headroom"),
        (["--policies", ""], "names no policy"),
        (["--arch", "gpt-9"], "--arch: expected one of llama-2-70b"),
        (["--engine", "tgi-3"], "--engine-calibration: expected one of vllm-v1, dynamollm-2024, got 'tgi-3'"),
        (["--iso-slo-target", "0"], "--iso-slo-target: must be > 0"),
        (["--quantile", "1"], "--quantile: must be < 1"),
        (["--amortize-s", "0"], "--amortize-s: must be > 0"),
    ],
)
def test_bad_options_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", str(trace(tmp_path / "t.csv", 60)), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_hourly_carbon_series_weights_each_hours_energy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 2-hour trace (sped down): hour 0 at 100 g/kWh, hour 1 at 500 g/kWh."""
    series = tmp_path / "carbon.txt"
    series.write_text("100\n500\n")
    args = ["simulate", str(trace(tmp_path / "t.csv", 120)), "--policies", "single-pool", "--gpus", "16", "--json"]
    assert main([*args, "--speed", "0.0166", "--carbon-g-per-kwh", str(series)]) == 0
    p = json.loads(capsys.readouterr().out)["policies"][0]
    # single-pool draws near-constant power: ~half the energy in each hour
    assert p["carbon_kg"] == pytest.approx(p["energy_kwh"] * 0.3, rel=0.05)
    assert main([*args, "--carbon-g-per-kwh", "-3"]) == 2
    assert "intensities" in capsys.readouterr().err
