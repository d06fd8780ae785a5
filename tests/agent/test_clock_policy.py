"""The instance-level clock policy: lowest modelled power among SLO-feasible clocks, max clock
when none meets the SLO, the lowest measured clock when idle."""

from __future__ import annotations

from wattgate.agent.clock_policy import ClockInput, ClockReason, choose_clock
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.profiles.table import Profile

SUPPORTED = tuple(range(210, 1981, 15))  # 800 is not one of them: 795, 810, ...


def profile() -> Profile:
    # SS on TP2: TTFT target 0.25 s. (tp, clock, type, load, ttft, tbt, power)
    rows = []
    for clock, ttft, power in ((800, 0.20, 500.0), (1205, 0.10, 600.0), (1595, 0.06, 800.0), (1980, 0.05, 1000.0)):
        rows.append((2, clock, "SS", 1.0, ttft, 0.05, power))
        rows.append((2, clock, "SS", 4.0, ttft * 2, 0.05, power + 100))
    # at 8 req/s the slow clock still meets the SLO but runs long and hot: 1205 MHz burns less
    rows += [
        (2, 800, "SS", 8.0, 0.24, 0.05, 900.0),
        (2, 1205, "SS", 8.0, 0.22, 0.05, 750.0),
        (2, 1595, "SS", 8.0, 0.15, 0.05, 950.0),
        (2, 1980, "SS", 8.0, 0.12, 0.05, 1150.0),
    ]
    return Profile("m", "H100", rows)


def choose(load: float, in_flight: int | None = 0, pool: str = "SS", tp: int = 2):  # type: ignore[no-untyped-def]
    return choose_clock(profile(), SloTargets(), SUPPORTED, ClockInput(pool, tp, load, in_flight))


def test_idle_takes_the_lowest_measured_clock() -> None:
    d = choose(0.0, in_flight=0)
    assert d.sm_clock_mhz == 810 and d.reason is ClockReason.IDLE  # lowest supported clock the profile covers


def test_requests_in_flight_are_not_idle() -> None:
    assert choose(0.0, in_flight=3).reason is ClockReason.LOWEST_ENERGY


def test_light_load_picks_lowest_power_clock_meeting_the_slo() -> None:
    d = choose(1.0)
    assert d.sm_clock_mhz == 810 and d.reason is ClockReason.LOWEST_ENERGY
    assert d.modelled_power_w is not None and 500.0 < d.modelled_power_w < 505.0


def test_lowest_energy_is_not_always_the_lowest_feasible_clock() -> None:
    d = choose(8.0)  # every clock meets the SLO; 810 MHz is the lowest but 1200 MHz burns least
    assert d.sm_clock_mhz == 1200 and d.reason is ClockReason.LOWEST_ENERGY
    assert d.modelled_power_w is not None and d.modelled_power_w < 760.0


def test_no_feasible_clock_runs_at_max() -> None:
    heavy = choose_clock(
        profile(),
        SloTargets(ttft_p99_s={k: 0.05 for k in SloTargets().ttft_p99_s}),
        SUPPORTED,
        ClockInput("SS", 2, 8.0, 5),
    )
    assert heavy.sm_clock_mhz == 1980 and heavy.reason is ClockReason.NO_FEASIBLE


def test_unprofiled_instance_runs_at_max() -> None:
    assert choose(1.0, pool="LL").reason is ClockReason.NO_PROFILE
    assert choose(1.0, tp=8).sm_clock_mhz == 1980


def test_a_pool_that_also_serves_a_stricter_type_meets_that_types_ttft() -> None:
    # MS (TTFT 0.5 s) at 4 req/s: 800 MHz gives 0.40 s, enough for MS alone but not for SS's 0.25 s
    rows = [
        (2, c, "MS", load, ttft * load / 2, 0.05, power + 25 * load)
        for c, ttft, power in ((800, 0.20, 500.0), (1205, 0.10, 600.0), (1980, 0.05, 1000.0))
        for load in (1.0, 4.0)
    ]
    prof = Profile("m", "H100", rows)
    alone = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 4.0, 1))
    shared = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 4.0, 1, serves=("SS", "MS")))
    assert alone.sm_clock_mhz < shared.sm_clock_mhz
    ms = RequestType.parse("MS")
    assert prof.lookup(2, alone.sm_clock_mhz, ms, 4.0).ttft_p99_s > 0.25  # fine for MS alone, not for SS
    assert prof.lookup(2, shared.sm_clock_mhz, ms, 4.0).ttft_p99_s <= 0.25
    assert shared.reason is ClockReason.LOWEST_ENERGY
