"""Workload loading and shaping: the Azure CSV as published, wattgate's observation log, speed/scale/tiling."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattgate.planner.contract import Observation
from wattgate.simulate.trace import Request, SimulateError, load_trace, scale, speed, tile_days

AZURE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def write_azure(path: Path, rows: list[tuple[str, int, int]]) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{t},{i},{o}" for t, i, o in rows]
    path.write_bytes("\r\n".join(lines).encode())  # CRLF, no trailing newline: as published
    return path


def test_azure_csv_crlf_and_seven_fractional_digits(tmp_path: Path) -> None:
    p = write_azure(
        tmp_path / "t.csv",
        [("2023-11-16 18:17:03.9799600", 4808, 10), ("2023-11-16 18:17:05.0319600", 3180, 8)],
    )
    reqs = load_trace(p)
    assert [(r.input_tokens, r.output_tokens) for r in reqs] == [(4808, 10), (3180, 8)]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(1.052, abs=1e-6)


@pytest.mark.skipif(not AZURE.exists(), reason="the shared Azure traces are not next to this checkout")
def test_the_published_conversation_trace_loads() -> None:
    reqs = load_trace(AZURE)
    assert len(reqs) == 19366
    assert 3400 < reqs[-1].arrival_s < 3600


def test_observation_log_arrival_is_finish_minus_latency(tmp_path: Path) -> None:
    def obs(ts: float, out: int, status: int = 200) -> str:
        return Observation("r", "SS", "SS", [1, 0, 0], 100, out, 0.5, 0.1, status, "i", "m", ts).to_json()

    p = tmp_path / "obs.jsonl"
    p.write_text("\n".join([obs(1000.0, 11), obs(1010.0, 1), obs(1005.0, 3, status=500)]) + "\n")
    reqs = load_trace(p)
    assert len(reqs) == 2  # failed requests are not workload
    assert reqs[0].arrival_s == 0.0  # 1000 - 0.5 - 10 x 0.1 = 998.5
    assert reqs[1].arrival_s == pytest.approx(1009.5 - 998.5)


def test_bad_traces_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SimulateError, match="does not exist"):
        load_trace(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SimulateError, match="expected the columns"):
        load_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n")
    with pytest.raises(SimulateError, match="line 2"):
        load_trace(bad)
    junk = tmp_path / "bad.jsonl"
    junk.write_text('{"not": "an observation"}\n')
    with pytest.raises(SimulateError, match="not an observation"):
        load_trace(junk)


def test_speed_scale_and_diurnal_tiling() -> None:
    reqs = [Request(float(t), 100, 10) for t in range(3600)]
    assert speed(reqs, 2.0)[-1].arrival_s == 3599 / 2
    assert len(scale(reqs, 2.0)) == 7200
    assert 1700 < len(scale(reqs, 0.5)) < 1900
    day = tile_days(reqs, 1.0)
    assert day[-1].arrival_s < 86400
    per_hour = [0] * 24
    for r in day:
        per_hour[int(r.arrival_s // 3600)] += 1
    assert per_hour[14] == pytest.approx(3600, rel=0.05)  # the peak hour: the trace itself
    assert per_hour[2] == pytest.approx(0.35 * 3600, rel=0.1)  # the night: 35% of it
    with pytest.raises(SimulateError):
        speed(reqs, 0)
    with pytest.raises(SimulateError):
        scale(reqs, -1)
