"""The shipped Llama-3.1-70B/H100 profile: loads, validates, covers every series, obeys physical invariants,
and its capacities are the ones the README prints."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from wattgate.profiles.builtin import DEFAULT_PROFILE, builtin_names, load_builtin, resolve_profile
from wattgate.profiles.classes import REQUEST_TYPES, RequestType, SloTargets
from wattgate.profiles.table import Profile
from wattgate.servingmodel.calibration import load_calibration

CLOCKS = (800, 1000, 1200, 1400, 1600, 1800, 1980)
TPS = (2, 4, 8)
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_builtin()


def test_default_is_shipped_and_cached(profile: Profile) -> None:
    assert DEFAULT_PROFILE == "llama-3.1-70b-h100"
    assert DEFAULT_PROFILE in builtin_names()
    assert load_builtin(DEFAULT_PROFILE) is profile
    assert resolve_profile(DEFAULT_PROFILE) is profile
    assert (profile.model, profile.gpu) == ("llama-3.1-70b", "H100-80GB-HBM3")


def test_every_series_starts_low_and_runs_past_its_slo_capacity(profile: Profile) -> None:
    slo = SloTargets()
    assert profile.tps == TPS
    assert profile.request_types == tuple(sorted(REQUEST_TYPES))
    for tp, rtype in itertools.product(TPS, REQUEST_TYPES):
        assert profile.clocks(tp, rtype) == CLOCKS
        for clock in CLOCKS:
            loads = profile.loads(tp, clock, rtype)
            assert loads[0] == 0.1
            last = profile.lookup(tp, clock, rtype, loads[-1])
            # the build stops once P99 TTFT (or TPOT) passes 3x its target: capacity is never cut off by the grid
            assert last.ttft_p99_s > 3 * slo.ttft_for(rtype) or last.tbt_p99_s > 3 * slo.tbt_p99_s


def test_provenance_says_modelled_and_names_the_serving_model_and_the_trace(profile: Profile) -> None:
    prov = profile.provenance
    assert "modelled" in prov["summary"] and "none measured" in prov["summary"]
    assert prov["serving_model"] == {
        "arch": "llama-3.1-70b",
        "engine": "vllm-v1",
        "calibration": "wattgate/servingmodel/data/",
    }
    assert prov["lengths"]["trace"]["licence"] == "CC-BY 4.0"


def test_power_rises_with_tp_at_every_point(profile: Profile) -> None:
    """Twice the GPUs at the same load draw well over 1.3x the power (the measured characterization's
    smallest ratios are 1.31 from TP2 to TP4 and 1.20 from TP4 to TP8, its medians 1.63 and 1.59)."""
    for (tp_small, tp_big), clock, rtype in itertools.product(((2, 4), (4, 8)), CLOCKS, REQUEST_TYPES):
        for load in profile.loads(tp_small, clock, rtype):
            if load in profile.loads(tp_big, clock, rtype):
                small = profile.lookup(tp_small, clock, rtype, load).power_w
                assert profile.lookup(tp_big, clock, rtype, load).power_w > 1.3 * small


def test_power_rises_with_clock_beyond_noise(profile: Profile) -> None:
    # A row's power is a mean over a few hundred requests of random lengths: adjacent clocks may cross by
    # up to 3%; from 800 to 1980 MHz an instance's power always rises, and what it draws above its idle
    # floor by more than 10%. (The total alone need not: near idle, at 0.1 req/s on TP8, it is mostly the
    # engines' idle draw, which the characterization's power fit finds the same at every clock.)
    idle = load_calibration().power.idle_gpu_w
    for tp, rtype in itertools.product(TPS, REQUEST_TYPES):
        for load in profile.loads(tp, 800, rtype):
            powers = [profile.lookup(tp, c, rtype, load).power_w for c in CLOCKS if load in profile.loads(tp, c, rtype)]
            assert all(b >= a * 0.97 for a, b in itertools.pairwise(powers))
            assert powers[-1] > powers[0]
            assert powers[-1] - tp * idle(1980) > 1.1 * (powers[0] - tp * idle(800))


def test_a_lone_request_is_faster_at_a_higher_clock(profile: Profile) -> None:
    for tp, rtype in itertools.product(TPS, REQUEST_TYPES):
        low, high = (profile.lookup(tp, c, rtype, 0.1) for c in (800, 1980))
        assert high.tbt_p99_s < low.tbt_p99_s
        # TP2's cache holds 12,960 tokens: a long-input request waits for the one before it, so its P99 TTFT
        # at 0.1 req/s is the luck of a few collisions, not the clock
        if tp > 2 or rtype.input != "L":
            assert high.ttft_p99_s < low.ttft_p99_s


def test_max_load_spot_checks(profile: Profile) -> None:
    slo = SloTargets()
    ss, ll = RequestType.parse("SS"), RequestType.parse("LL")
    # more GPUs carry more: TP8 beats TP4 beats TP2 at the top clock for short and long requests
    for rtype in (ss, ll):
        caps = [profile.max_load(tp, 1980, rtype, slo) for tp in TPS]
        assert caps == sorted(caps) and caps[-1] > caps[0]
    # a lower clock carries less: the price of the energy it saves
    assert profile.max_load(8, 800, ss, slo) < profile.max_load(8, 1980, ss, slo)
    assert profile.max_load(8, 800, ll, slo) < profile.max_load(8, 1980, ll, slo)


def _readme_capacity_table() -> dict[str, list[float]]:
    text = README.read_text(encoding="utf-8")
    start = text.index("Capacity at the default targets, from the shipped profile")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        m = re.match(r"\| ([SML]{2}) \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [float(x) for x in m.group(2).split("|")]
        elif rows:
            break
    return rows


def test_capacity_table_in_the_readme_is_the_shipped_profiles() -> None:
    table = _readme_capacity_table()
    assert sorted(table) == sorted(t.name for t in REQUEST_TYPES)
    profile = load_builtin()
    configs = [(2, 800), (2, 1980), (4, 800), (4, 1980), (8, 800), (8, 1980)]
    for name, caps in table.items():
        got = [profile.max_load(tp, clock, RequestType.parse(name), SloTargets()) for tp, clock in configs]
        assert got == pytest.approx(caps, abs=0.006), name
