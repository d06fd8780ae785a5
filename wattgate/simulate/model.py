"""The planner's profile as the replay's planner and clock policy use it: cached capacities and clocks (modelled)."""

from __future__ import annotations

import math

from wattgate.agent.clock_policy import ClockInput, choose_clock
from wattgate.profiles.classes import REQUEST_TYPES, ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile, ProfilePoint
from wattgate.simulate.trace import SimulateError

TYPE_INDEX = {t.name: i for i, t in enumerate(REQUEST_TYPES)}
CLASSES_INDEX = {(t.input, t.output): i for i, t in enumerate(REQUEST_TYPES)}  # (input, output) -> TYPE_INDEX
LOAD_STEP = 0.02  # req/s: operating points are looked up on this grid (cache key)


class Model:
    """Caching facade over a Profile: the replay asks the same questions millions of times."""

    def __init__(self, profile: Profile, slo: SloTargets, headroom: float = 1.0) -> None:
        self.profile = profile
        self.slo = slo
        self.headroom = headroom  # the planner's: the clock policy keeps the same share of capacity free
        self._points: dict[tuple[int, int, int, int], ProfilePoint] = {}
        self._measured: dict[tuple[int, int, int], float] = {}
        self._caps: dict[tuple[int, int, int], float] = {}
        self._clocks: dict[tuple[str, int, int, bool], int] = {}
        for t in REQUEST_TYPES:
            if t not in profile.request_types:
                raise SimulateError(f"profile {profile.model} has no measurements for request type {t}")

    def top_clock(self, tp: int) -> int:
        return self.profile.clocks(tp, REQUEST_TYPES[0])[-1]

    def measured_max(self, tp: int, clock: int, t: int) -> float:
        """Highest measured load: the instance's throughput ceiling for type ``t`` (req/s)."""
        key = (tp, clock, t)
        v = self._measured.get(key)
        if v is None:
            try:
                v = self.profile.max_measured_load(tp, clock, REQUEST_TYPES[t])
            except ProfilesError:
                v = 0.0
            self._measured[key] = v
        return v

    def cap(self, tp: int, clock: int, t: int) -> float:
        """SLO-feasible load (req/s) of one instance for type ``t``."""
        key = (tp, clock, t)
        v = self._caps.get(key)
        if v is None:
            try:
                v = self.profile.max_load(tp, clock, REQUEST_TYPES[t], self.slo)
            except ProfilesError:
                v = 0.0
            self._caps[key] = v
        return v

    def point(self, tp: int, clock: int, t: int, load_rps: float) -> ProfilePoint:
        q = round(load_rps / LOAD_STEP)
        key = (tp, clock, t, q)
        p = self._points.get(key)
        if p is None:
            top = self.measured_max(tp, clock, t)
            load = min(q * LOAD_STEP, top)
            try:
                p = self.profile.lookup(tp, clock, REQUEST_TYPES[t], load)
            except ProfilesError as exc:
                raise SimulateError(
                    f"profile cannot model TP{tp} at {clock} MHz for {REQUEST_TYPES[t]}: {exc}"
                ) from exc
            self._points[key] = p
        return p

    def clock_for(self, pool: RequestType, tp: int, load_rps: float, busy: bool) -> int:
        """The agent's own clock policy (wattgate.agent.clock_policy), cached on a load grid."""
        q = math.ceil(load_rps / 0.05 - 1e-9)  # up: never a clock too slow for the load
        key = (pool.name, tp, q, busy)
        c = self._clocks.get(key)
        if c is None:
            supported = self.profile.clocks(tp, pool)
            x = ClockInput(pool.name, tp, q * 0.05, 1 if busy else 0, headroom=self.headroom)
            c = choose_clock(self.profile, self.slo, supported, x).sm_clock_mhz
            self._clocks[key] = c
        return c
