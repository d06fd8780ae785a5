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
        (lambda d: d.update(columns=["tp", "clock"]), "columns must be"),
        (lambda d: d.update(rows={"a": 1}), "'rows' must be a list"),
        (lambda d: d.pop("gpu"), "'gpu'"),
        (lambda d: d.pop("version"), "format version None"),
        (lambda d: d["rows"].append([8, 1000, "SS", 0.0, 0.1, 0.1, 1.0]), "load_rps and power_w must be > 0"),
        (lambda d: d["rows"].append([8, 1000, "SS", 1.5, 0.1, 0.1, 0.0]), "load_rps and power_w must be > 0"),
        (lambda d: d["rows"].append([8, 1000, "SS", 1.5, -0.1, 0.1, 1.0]), "ttft_p99_s"),
        (lambda d: d["rows"].append([8, 1000, "SS", 1.5, 0.1, float("inf"), 1.0]), "tbt_p99_s"),
        (lambda d: d["rows"].append([8, 1000.5, "SS", 1.5, 0.1, 0.1, 1.0]), "sm_clock_mhz"),
        (lambda d: d["rows"].append([True, 1000, "SS", 1.5, 0.1, 0.1, 1.0]), "tp must be"),
        (lambda d: d["rows"].append([8, 1000, "SS", True, 0.1, 0.1, 1.0]), "load_rps"),
        (lambda d: d["rows"].append([8, 1000, 7, 1.5, 0.1, 0.1, 1.0]), "request_type"),
        (lambda d: d["rows"].append("8,1000,SS"), "expected 7 values"),
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


SM = RequestType.parse("SM")


def test_type_missing_at_one_clock_interpolates_across_the_gap() -> None:
    rows = [
        *ROWS,
        [8, 1500, "SS", 1.0, 0.07, 0.04, 1500.0],
        [8, 1500, "SS", 3.0, 0.20, 0.06, 1800.0],
        [8, 1000, "SM", 1.0, 0.20, 0.05, 1000.0],
        [8, 2000, "SM", 1.0, 0.10, 0.03, 2000.0],
    ]
    p = load_profile(_doc(rows))
    assert p.clocks(8, SS) == (1000, 1500, 2000)
    assert p.clocks(8, SM) == (1000, 2000)
    # SS uses its own 1500 MHz point; SM, unmeasured there, interpolates between 1000 and 2000 MHz.
    assert p.lookup(8, 1500, SS, 1.0).ttft_p99_s == pytest.approx(0.07)
    assert p.lookup(8, 1500, SM, 1.0).ttft_p99_s == pytest.approx(0.15)
    with pytest.raises(ProfileRangeError, match="no measurements for TP8 at 1500 MHz for SM"):
        p.loads(8, 1500, SM)


def test_type_measured_at_one_clock_only_refuses_other_clocks() -> None:
    p = load_profile(_doc([*ROWS, [8, 1000, "SM", 1.0, 0.2, 0.05, 1000.0]]))
    assert p.lookup(8, 1000, SM, 0.5).ttft_p99_s == pytest.approx(0.2)
    with pytest.raises(ProfileRangeError, match="outside the measured 1000-1000 MHz"):
        p.lookup(8, 1500, SM, 1.0)
    with pytest.raises(ProfileRangeError, match="no measurements for TP8 SL"):
        p.lookup(8, 1000, RequestType.parse("SL"), 1.0)


def test_between_clocks_the_shorter_load_range_bounds_the_query() -> None:
    rows = [*ROWS, [8, 2000, "SS", 5.0, 0.2, 0.06, 2600.0]]
    p = load_profile(_doc(rows))
    assert p.lookup(8, 2000, SS, 5.0).power_w == pytest.approx(2600.0)
    assert p.max_measured_load(8, 1500, SS) == 3.0
    with pytest.raises(ProfileRangeError, match="above the highest measured 3"):
        p.lookup(8, 1500, SS, 4.0)
    assert p.lookup(8, 1500, SS, 3.0).ttft_p99_s == pytest.approx((0.30 + 0.15) / 2)


def test_single_load_series_answers_up_to_that_load() -> None:
    p = load_profile(_doc([[4, 1200, "LL", 1.5, 1.0, 0.05, 900.0]]))
    assert p.lookup(4, 1200, RequestType.parse("LL"), 0.1).ttft_p99_s == 1.0
    assert p.max_load(4, 1200, RequestType.parse("LL"), SloTargets()) == 1.5
    with pytest.raises(ProfileRangeError, match="above the highest"):
        p.lookup(4, 1200, RequestType.parse("LL"), 1.6)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileFormatError, match="cannot read profile"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ProfileFormatError, match="not a wattgate profile"):
        load_profile(tmp_path / "list.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProfileFormatError, match="not valid JSON"):
        load_profile(tmp_path / "binary.json")


def test_clock_and_tp_queries_out_of_range() -> None:
    p = load_profile(_doc(ROWS))
    with pytest.raises(ProfileRangeError, match="outside the measured"):
        p.lookup(8, 2001, SS, 1.0)
    with pytest.raises(ProfileRangeError, match="outside the measured"):
        p.lookup(8, float("inf"), SS, 1.0)
    with pytest.raises(ProfileRangeError, match="no measurements for TP2"):
        p.max_load(2, 1000, SS, SloTargets())
    assert p.lookup(8, 1000.0, SS, 3.0) == p.lookup(8, 1000, SS, 3.0)
