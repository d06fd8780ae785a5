"""The instance-level clock policy: lowest modelled power among SLO-feasible clocks (every type the
instance serves judged by its own rows), max clock when none meets the SLO, and when idle the lowest
clock at which a lone request of every served type meets its target."""

from __future__ import annotations

from wattgate.agent.clock_policy import DEFAULT_BURST, BurstRule, ClockInput, ClockReason, burst_until, choose_clock
from wattgate.profiles.classes import LengthClass, RequestType, SloTargets
from wattgate.profiles.table import Profile
from wattgate.settings import common

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


def spilled_profile() -> Profile:
    """MS (TTFT 0.5 s) and SS (0.25 s) on TP2: SS's own rows are slow at 800 MHz, MS's are not."""
    rows = []
    for c, ms_ttft, ss_ttft, power in ((800, 0.20, 0.40, 500.0), (1205, 0.10, 0.15, 600.0), (1980, 0.05, 0.08, 1000.0)):
        for load in (1.0, 4.0):
            rows.append((2, c, "MS", load, ms_ttft * load / 2, 0.05, power + 25 * load))
            rows.append((2, c, "SS", load, ss_ttft * load / 2, 0.05, power + 20 * load))
    return Profile("m", "H100", rows)


def test_each_served_type_is_judged_by_its_own_rows_at_the_whole_load() -> None:
    prof, ss, ms = spilled_profile(), RequestType.parse("SS"), RequestType.parse("MS")
    alone = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 4.0, 1))
    shared = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 4.0, 1, serves=("SS",)))
    assert alone.sm_clock_mhz < shared.sm_clock_mhz
    assert prof.lookup(2, alone.sm_clock_mhz, ms, 4.0).ttft_p99_s <= 0.5  # fine for MS alone
    assert prof.lookup(2, alone.sm_clock_mhz, ss, 4.0).ttft_p99_s > 0.25  # an SS request there would miss
    assert prof.lookup(2, shared.sm_clock_mhz, ss, 4.0).ttft_p99_s <= 0.25
    assert prof.lookup(2, shared.sm_clock_mhz, ms, 4.0).ttft_p99_s < 0.25  # MS's rows alone would not ask this
    assert shared.reason is ClockReason.LOWEST_ENERGY


def test_idle_clock_lets_a_lone_request_of_every_served_type_meet_its_target() -> None:
    prof = spilled_profile()
    own = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 0.0, 0))
    shared = choose_clock(prof, SloTargets(), SUPPORTED, ClockInput("MS", 2, 0.0, 0, serves=("SS",)))
    assert own.sm_clock_mhz == 810 and own.reason is ClockReason.IDLE  # MS alone: 0.10 s at 800 MHz
    # SS alone at 810 MHz: 0.20 s at load 1 (the lowest measured), within 0.25 s; a stricter target moves it up
    strict = SloTargets(ttft_p99_s={**SloTargets().ttft_p99_s, LengthClass.S: 0.15})
    assert shared.sm_clock_mhz == 810
    raised = choose_clock(prof, strict, SUPPORTED, ClockInput("MS", 2, 0.0, 0, serves=("SS",)))
    assert raised.reason is ClockReason.IDLE and 810 < raised.sm_clock_mhz < 1980
    assert prof.lookup(2, raised.sm_clock_mhz, RequestType.parse("SS"), 0.0).ttft_p99_s <= 0.15


def test_requests_in_flight_before_the_load_windows_count_them_get_a_clock_their_types_meet() -> None:
    prof, ss = spilled_profile(), RequestType.parse("SS")
    strict = SloTargets(ttft_p99_s={**SloTargets().ttft_p99_s, LengthClass.S: 0.15})
    d = choose_clock(prof, strict, SUPPORTED, ClockInput("MS", 2, 0.0, 2, serves=("SS",)))
    assert d.reason is ClockReason.LOWEST_ENERGY and d.sm_clock_mhz > 810
    assert prof.lookup(2, d.sm_clock_mhz, ss, 0.0).ttft_p99_s <= 0.15


def test_an_unmeasured_spilled_type_is_left_out() -> None:
    d = choose_clock(profile(), SloTargets(), SUPPORTED, ClockInput("SS", 2, 1.0, 1, serves=("LL", "XX")))
    assert d.sm_clock_mhz == 810 and d.reason is ClockReason.LOWEST_ENERGY


HOLD_5 = BurstRule(5.0, min_waiting=1)  # any queue


def test_burst_a_queue_takes_the_top_clock_at_once() -> None:
    assert burst_until(100.0, 3, None, HOLD_5) == 105.0  # requests wait: held until 5 s after this check
    assert burst_until(100.0, 0, None, HOLD_5) is None  # no queue, no burst: the clock loop decides
    assert burst_until(100.0, None, None, HOLD_5) is None  # an engine whose metrics do not answer starts nothing


def test_burst_holds_while_the_queue_lasts_then_releases_after_the_hold() -> None:
    until = burst_until(100.0, 2, None, HOLD_5)
    until = burst_until(101.0, 1, until, HOLD_5)  # still queued: the hold runs from the last queue seen
    assert until == 106.0
    assert burst_until(103.0, 0, until, HOLD_5) == 106.0  # empty, but not for long enough yet
    assert burst_until(105.9, None, until, HOLD_5) == 106.0  # unknown neither extends nor ends it
    assert burst_until(106.0, 0, until, HOLD_5) is None  # empty for the hold time: released


def test_burst_hold_zero_switches_the_rule_off() -> None:
    assert burst_until(100.0, 50, None, BurstRule(0.0)) is None
    assert burst_until(100.0, 50, 104.0, BurstRule(0.0)) is None


def test_burst_a_queue_shorter_than_the_trigger_neither_starts_nor_extends_a_burst() -> None:
    rule = BurstRule(5.0, min_waiting=4)
    assert burst_until(100.0, 3, None, rule) is None
    until = burst_until(100.0, 4, None, rule)
    assert until == 105.0
    assert burst_until(102.0, 3, until, rule) == 105.0  # short queue: the hold runs on from the last long one
    assert burst_until(105.0, 3, until, rule) is None


def test_burst_a_fixed_server_has_its_own_trigger() -> None:
    rule = BurstRule(5.0, min_waiting=4, min_waiting_fixed=2)
    assert burst_until(100.0, 2, None, rule) is None  # a managed instance waits for a queue of 4
    assert burst_until(100.0, 2, None, rule, fixed=True) == 105.0  # a server wattgate does not manage: 2
    assert burst_until(100.0, 1, None, rule, fixed=True) is None
    assert DEFAULT_BURST.trigger(fixed=True) < DEFAULT_BURST.trigger(fixed=False)


def test_the_burst_options_defaults_are_the_rules() -> None:
    # the settings model may not import the agent: its options repeat the rule's defaults
    assert (
        common.BURST_HOLD_S.default,
        common.BURST_MIN_WAITING.default,
        common.BURST_MIN_WAITING_FIXED.default,
    ) == (DEFAULT_BURST.hold_s, DEFAULT_BURST.min_waiting, DEFAULT_BURST.min_waiting_fixed)
