"""The instance-level clock policy (pure): the lowest-energy SM clock that still meets the SLO.

The profile gives instance power at a load for each clock. At a fixed load (requests per second)
the energy per unit time is that power, and the energy per request is power / load, so among the
clocks whose predicted P99 latency meets the SLO at this load, the one with the lowest modelled
power is also the one with the lowest energy per request. When no clock meets the SLO the policy
picks the highest clock (best latency).

An instance serves its pool's type and every type the plan spills into its pool. Each of them is
judged by its own profile rows at the instance's whole load, against its own targets: a short-input
request spilled into a long-output pool gets the short-input TTFT of its own rows, which at a low
clock can be many times the pool type's (an engine batches them together; the latency each sees is its
own type's at that load). When the instance is idle, the clock is the lowest at which a lone request
of every type it serves meets its targets: the next arrival's first token comes before the loop's next
tick can raise the clock.

The burst rule (``burst_until``) overrides that choice between the loop's ticks: an instance whose engine
has at least ``BurstRule.min_waiting`` requests waiting in its queue runs at its top clock at once (checked
every agent tick, 1 s), and goes back to the loop's choice once the queue has stayed shorter than that for
``BurstRule.hold_s``. The clock loop judges a
load window (seconds to a minute) and would raise the clock after a burst lasting seconds is over;
the queue says within a tick that the current clock is not keeping up.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile

# The burst rule's defaults, measured on the Azure hours (README, *Fixed fleet*): a queue of 4 lifts the coding hour
# at no energy cost and leaves the conversation hour as it was; a queue of 1 lifts coding more but costs the
# conversation hour 10-12% more energy (every stray waiting request takes a server to the top clock).
DEFAULT_BURST_HOLD_S = 1.0  # s; 0: off
DEFAULT_BURST_MIN_WAITING = 4
# Servers wattgate does not manage (a fixed fleet) go to the top clock as soon as a request waits: their count
# cannot follow the load, so at low load the plan runs them at low clocks with little headroom, and a burst has
# only the clock to meet it. Measured (README, *Fixed fleet*): 99.3% within SLO on the coding hour on 7 and
# 8 x TP8, where a queue of 2 kept 99.0-99.05% and 4 kept 98.5-98.8%; managed instances keep 4, since at 2 twice
# the conversation hour already used 3% more energy.
DEFAULT_BURST_MIN_WAITING_FIXED = 1


class ClockReason(enum.StrEnum):
    IDLE = "idle: lowest clock a lone request of every served type meets the SLO at"
    LOWEST_ENERGY = "lowest-energy clock meeting the SLO"
    NO_FEASIBLE = "no clock meets the SLO at this load: max clock"
    NO_PROFILE = "the profile does not cover this instance: max clock"
    FLOOR = "the planner's reactive clock floor (its pool's requests waited too long)"
    BURST = "the burst rule: requests wait in the engine's queue: top clock until it has been empty a while"


@dataclass(frozen=True)
class ClockInput:
    """What the policy sees of one instance at one tick."""

    pool: str
    tp: int
    load_rps: float  # this instance's share of its pool's live load (every type it serves)
    in_flight: int | None  # running + waiting from the engine's /metrics, None if unknown
    serves: tuple[str, ...] = ()  # other request types the plan sends to this pool: each is judged too
    headroom: float = 1.0  # the plan's: a clock is feasible when the load is within this share of its capacity


@dataclass(frozen=True)
class ClockDecision:
    sm_clock_mhz: int
    reason: ClockReason
    modelled_power_w: float | None  # modelled (profile) at this load and clock, mean over the served types


def choose_clock(profile: Profile, slo: SloTargets, supported_mhz: Sequence[int], x: ClockInput) -> ClockDecision:
    """Pick the SM clock for one instance. ``supported_mhz``: clocks all its GPUs support."""
    top = max(supported_mhz)
    types = served_types(profile, x)
    if not types:
        return ClockDecision(top, ClockReason.NO_PROFILE, None)
    lo = max(profile.clocks(x.tp, t)[0] for t in types)  # clocks measured for every served type
    hi = min(profile.clocks(x.tp, t)[-1] for t in types)
    candidates = sorted(c for c in supported_mhz if lo <= c <= hi)
    if not candidates:
        return ClockDecision(top, ClockReason.NO_PROFILE, None)
    if x.load_rps <= 0 and not x.in_flight:
        for clock in candidates:
            if all(_lone_request_meets(profile, slo, x.tp, clock, t) for t in types):
                return ClockDecision(clock, ClockReason.IDLE, _power(profile, x.tp, clock, types, 0.0))
        return ClockDecision(top, ClockReason.IDLE, _power(profile, x.tp, top, types, 0.0))
    best: tuple[float, int] | None = None
    for clock in candidates:
        # a capacity of 0 (not even the lightest measured load meets the SLO) rules the clock out even when
        # the live load reads 0: requests in flight that the load windows have not counted yet
        caps = [profile.max_load(x.tp, clock, t, slo) for t in types]
        if any(cap <= 0 or x.load_rps > cap * x.headroom for cap in caps):
            continue
        power = _power(profile, x.tp, clock, types, x.load_rps)
        if power is not None and (best is None or power < best[0]):
            best = (power, clock)
    if best is None:
        return ClockDecision(top, ClockReason.NO_FEASIBLE, None)
    return ClockDecision(best[1], ClockReason.LOWEST_ENERGY, best[0])


def served_types(profile: Profile, x: ClockInput) -> tuple[RequestType, ...]:
    """The instance's pool type and the types spilled into it that the profile measured at its TP (an
    unknown or unmeasured name in the plan is left out: the policy cannot judge it)."""
    out: list[RequestType] = []
    for name in (x.pool, *x.serves):
        try:
            t = RequestType.parse(name)
        except ProfilesError:
            continue
        if profile.covers(x.tp, t) and t not in out:
            out.append(t)
    return tuple(out)


def _lone_request_meets(profile: Profile, slo: SloTargets, tp: int, clock: int, t: RequestType) -> bool:
    p = profile.lookup(tp, clock, t, 0.0)
    return slo.met(t, p.ttft_p99_s, p.tbt_p99_s)


def _power(profile: Profile, tp: int, clock: int, types: Sequence[RequestType], load: float) -> float | None:
    try:
        return sum(
            profile.lookup(tp, clock, t, min(load, profile.max_measured_load(tp, clock, t))).power_w for t in types
        ) / len(types)
    except ProfilesError:
        return None


@dataclass(frozen=True)
class BurstRule:
    """The burst rule's settings: ``min_waiting`` requests in an engine's queue start (or extend) a burst
    (``min_waiting_fixed`` on a server wattgate does not manage); the top clock is released once the queue has
    stayed below that for ``hold_s`` (0: the rule is off)."""

    hold_s: float = DEFAULT_BURST_HOLD_S
    min_waiting: int = DEFAULT_BURST_MIN_WAITING
    min_waiting_fixed: int = DEFAULT_BURST_MIN_WAITING_FIXED

    def trigger(self, fixed: bool) -> int:
        """The queue that starts a burst on a managed instance, or on a fixed one (``fixed``)."""
        return max(1, self.min_waiting_fixed if fixed else self.min_waiting)

    @property
    def on(self) -> bool:
        return self.hold_s > 0


DEFAULT_BURST = BurstRule()


def burst_until(
    now: float, waiting: int | None, until: float | None, rule: BurstRule, fixed: bool = False
) -> float | None:
    """The burst rule for one instance at one check: until when it runs at its top clock (None: it does not,
    the clock loop's choice applies). ``waiting``: requests in its engine's queue (None: unknown, which
    neither starts nor extends a burst); ``until``: this function's answer at the previous check; ``fixed``:
    a server wattgate does not manage (its own trigger, ``BurstRule.min_waiting_fixed``)."""
    if not rule.on:
        return None
    if waiting is not None and waiting >= rule.trigger(fixed):
        return now + rule.hold_s
    if until is not None and now < until:
        return until
    return None
