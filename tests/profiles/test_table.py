from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.profiles.table import Profile, ProfileFormatError, ProfileRangeError, load_profile

SS = RequestType.parse("SS")


def _doc(rows: list[list[Any]]) -> dict[str, Any]:
    return {
        "format": "wattgate-profile",
        "version": 1,
        "model": "m",
        "gpu": "g",
        "columns": ["tp", "sm_clock_mhz", "request_type", "load_rps", "ttft_p99_s", "tbt_p99_s", "power_w"],
        "rows": rows,
    }


ROWS = [
    [8, 1000, "SS", 1.0, 0.10, 0.05, 1000.0],
    [8, 1000, "SS", 3.0, 0.30, 0.07, 1200.0],
    [8, 2000, "SS", 1.0, 0.05, 0.03, 2000.0],
    [8, 2000, "SS", 3.0, 0.15, 0.05, 2400.0],
]


def test_interpolates_in_load_and_clock() -> None:
    p = load_profile(_doc(ROWS))
    mid = p.lookup(8, 1000, SS, 2.0)
    assert mid.ttft_p99_s == pytest.approx(0.20)
    assert mid.power_w == pytest.approx(1100.0)
    both = p.lookup(8, 1500, SS, 2.0)
    assert both.ttft_p99_s == pytest.approx((0.20 + 0.10) / 2)
    assert both.power_w == pytest.approx((1100 + 2200) / 2)


def test_below_lowest_load_takes_lowest_point() -> None:
    p = load_profile(_doc(ROWS))
    assert p.lookup(8, 1000, SS, 0.0) == p.lookup(8, 1000, SS, 1.0)


@pytest.mark.parametrize(
    ("tp", "clock", "load", "match"),
    [
        (8, 1000, 3.5, "above the highest"),
        (8, 900, 1.0, "outside the measured"),
        (4, 1000, 1.0, "no measurements"),
        (8, 1000, -1.0, "finite number"),
        (8, 1000, float("nan"), "finite number"),
    ],
)
def test_out_of_range_queries_raise(tp: int, clock: int, load: float, match: str) -> None:
    with pytest.raises(ProfileRangeError, match=match):
        load_profile(_doc(ROWS)).lookup(tp, clock, SS, load)


def test_max_load_interpolates_the_slo_crossing() -> None:
    p = load_profile(_doc(ROWS))
    # TTFT target for S inputs is 0.25 s: at 1000 MHz TTFT = 0.1 * load, crossing at 2.5 req/s.
    assert p.max_load(8, 1000, SS, SloTargets()) == pytest.approx(2.5)
    assert p.max_load(8, 2000, SS, SloTargets()) == pytest.approx(3.0)
    assert p.max_load(8, 1000, SS, SloTargets(tbt_p99_s=0.04)) == 0.0


def test_max_load_stops_at_first_violation_in_noisy_series() -> None:
    rows = [[2, 1000, "SS", x, t, 0.05, 500.0] for x, t in ((1.0, 0.1), (2.0, 0.3), (3.0, 0.1))]
    assert load_profile(_doc(rows)).max_load(2, 1000, SS, SloTargets()) == pytest.approx(1.75)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other"), "not a wattgate profile"),
        (lambda d: d.update(version=2), "format version"),
        (lambda d: d.update(rows=[]), "no rows"),
        (lambda d: d["rows"].append(list(d["rows"][0])), "duplicate point"),
        (lambda d: d["rows"].append([3, 1000, "SS", 1.0, 0.1, 0.1, 1.0]), "tp must be"),
        (lambda d: d["rows"].append([8, 1000, "XX", 1.0, 0.1, 0.1, 1.0]), "request_type"),
        (lambda d: d["rows"].append([8, 1000, "SS", 1.5, "fast", 0.1, 1.0]), "ttft_p99_s"),
        (lambda d: d["rows"].append([8, 1000, "SS", 1.5, 0.1, 0.1]), "expected 7 values"),
        (lambda d: d.update(model=""), "model"),
    ],
)
def test_bad_documents_are_refused(mutate: Any, match: str) -> None:
    doc = _doc([list(r) for r in ROWS])
    mutate(doc)
    with pytest.raises(ProfileFormatError, match=match):
        load_profile(doc)


def test_round_trip_through_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(load_profile(_doc(ROWS)).to_document()))
    p = load_profile(path)
    assert isinstance(p, Profile)
    assert p.tps == (8,)
    assert p.clocks(8, SS) == (1000, 2000)
    with pytest.raises(ProfileFormatError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_profile(tmp_path / "bad.json")


def test_max_load_crossing_is_per_target_not_of_the_minimum_slack() -> None:
    # At 1 req/s TBT has the smaller slack (0.15 - 0.05 = 0.10 < 0.25 - 0.10), yet TTFT is what
    # fails at 3 req/s and TBT never does: the crossing is TTFT's own, 2.5 req/s (not 2.33).
    slo = SloTargets(tbt_p99_s=0.15)
    assert load_profile(_doc(ROWS)).max_load(8, 1000, SS, slo) == pytest.approx(2.5)
    # Both targets fail at 3 req/s: the earlier crossing wins (TBT 0.05 -> 0.07 crosses 0.06 at 2.0).
    assert load_profile(_doc(ROWS)).max_load(8, 1000, SS, SloTargets(tbt_p99_s=0.06)) == pytest.approx(2.0)
