"""The instance-level clock policy (pure): the lowest-energy SM clock that still meets the SLO.

The profile gives instance power at a load for each clock. At a fixed load (requests per second)
the energy per unit time is that power, and the energy per request is power / load, so among the
clocks whose predicted P99 latency meets the SLO at this load, the one with the lowest modelled
power is also the one with the lowest energy per request. When no clock meets the SLO the policy
picks the highest clock (best latency). When the plan sends other request types to the instance's
pool, the SLO is the strictest of all of them; when the instance is idle, the lowest clock the profile
measured (about 800 MHz on H100: lower clocks make the next request's first token slow).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile


class ClockReason(enum.StrEnum):
    IDLE = "idle"
    LOWEST_ENERGY = "lowest-energy clock meeting the SLO"
    NO_FEASIBLE = "no clock meets the SLO at this load: max clock"
    NO_PROFILE = "the profile does not cover this instance: max clock"


@dataclass(frozen=True)
class ClockInput:
    """What the policy sees of one instance at one tick."""

    pool: str
    tp: int
    load_rps: float  # this instance's share of its pool's live load
    in_flight: int | None  # running + waiting from the engine's /metrics, None if unknown
    serves: tuple[str, ...] = ()  # other request types the plan sends to this pool: their SLO counts too
    headroom: float = 1.0  # the plan's: a clock is feasible when the load is within this share of its capacity


@dataclass(frozen=True)
class ClockDecision:
    sm_clock_mhz: int
    reason: ClockReason
    modelled_power_w: float | None  # modelled (profile) at this load and clock


def choose_clock(profile: Profile, slo: SloTargets, supported_mhz: Sequence[int], x: ClockInput) -> ClockDecision:
    """Pick the SM clock for one instance. ``supported_mhz``: clocks all its GPUs support."""
    top = max(supported_mhz)
    try:
        rtype = RequestType.parse(x.pool)
        measured = profile.clocks(x.tp, rtype)
    except ProfilesError:
        return ClockDecision(top, ClockReason.NO_PROFILE, None)
    candidates = sorted(c for c in supported_mhz if measured[0] <= c <= measured[-1]) or [
        c for c in measured if c in set(supported_mhz)
    ]
    if not candidates:
        return ClockDecision(top, ClockReason.NO_PROFILE, None)
    slo = strictest(slo, rtype, x.serves)
    if x.load_rps <= 0 and not x.in_flight:
        low = candidates[0]
        return ClockDecision(low, ClockReason.IDLE, _power(profile, x.tp, low, rtype, 0.0))
    best: tuple[float, int] | None = None
    for clock in candidates:
        try:
            if x.load_rps > profile.max_load(x.tp, clock, rtype, slo) * x.headroom:
                continue
            power = profile.lookup(x.tp, clock, rtype, x.load_rps).power_w
        except ProfilesError:
            continue
        if best is None or power < best[0]:
            best = (power, clock)
    if best is None:
        return ClockDecision(top, ClockReason.NO_FEASIBLE, None)
    return ClockDecision(best[1], ClockReason.LOWEST_ENERGY, best[0])


def strictest(slo: SloTargets, rtype: RequestType, serves: Sequence[str]) -> SloTargets:
    """``slo`` with ``rtype``'s TTFT target tightened to the strictest of the types it serves."""
    ttft = slo.ttft_for(rtype)
    for name in serves:
        try:
            ttft = min(ttft, slo.ttft_for(RequestType.parse(name)))
        except ProfilesError:
            continue  # an unknown type name in the plan: ignored
    return SloTargets({**slo.ttft_p99_s, rtype.input: ttft}, slo.tbt_p99_s)


def _power(profile: Profile, tp: int, clock: int, rtype: RequestType, load: float) -> float | None:
    try:
        return profile.lookup(tp, clock, rtype, load).power_w
    except ProfilesError:
        return None
