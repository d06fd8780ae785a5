from __future__ import annotations

import json
from pathlib import Path

import pytest

from wattgate.profiles.builtin import builtin_names, load_builtin, profile_or_default, resolve_profile
from wattgate.profiles.classes import ProfilesError
from wattgate.profiles.table import ProfileFormatError

ROW = [8, 1000, "SS", 1.0, 0.1, 0.05, 1000.0]
DOC = {
    "format": "wattgate-profile",
    "version": 1,
    "model": "m",
    "gpu": "g",
    "columns": ["tp", "sm_clock_mhz", "request_type", "load_rps", "ttft_p99_s", "tbt_p99_s", "power_w"],
    "rows": [ROW],
}


def test_unknown_builtin_name_is_a_clear_error() -> None:
    with pytest.raises(ProfilesError, match="unknown builtin profile 'nope'"):
        load_builtin("nope")


def test_resolve_profile_reads_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(DOC))
    profile = resolve_profile(str(path))
    assert profile.model == "m"
    assert profile.tps == (8,)


@pytest.mark.parametrize("spec", ["", "   ", "no-such-profile-or-file.json"])
def test_resolve_profile_refuses_what_is_neither(spec: str) -> None:
    with pytest.raises(ProfilesError, match="profile"):
        resolve_profile(spec)


def test_resolve_profile_bad_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ProfileFormatError, match="not valid JSON"):
        resolve_profile(str(path))


def test_builtin_names_are_sorted_strings() -> None:
    names = builtin_names()
    assert list(names) == sorted(names)


def test_profile_or_default_without_a_spec_is_the_shipped_default(tmp_path: Path) -> None:
    assert profile_or_default(None) is load_builtin()
    assert profile_or_default("") is load_builtin()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(DOC))
    assert profile_or_default(str(path)).model == "m"
    with pytest.raises(ProfilesError, match="neither a builtin profile"):
        profile_or_default("no-such-profile-or-file.json")
