"""The simulated engine's batching model: continuous batching in simulated time, latency and power from a profile.

Pure and clock-free: every method takes the simulated time ``now_s`` (and the SM clock) from the
caller, so tests step it without sleeping. All times here are simulated seconds.

Model (each choice is what makes a run at a profile's operating point reproduce that row):

- **Load** is the arrival rate over a sliding window: arrivals in ``(t - load_window_s, t]``
  divided by ``load_window_s`` (all request types together). Driving the engine with a steady
  rate ``L`` of one type for longer than the window makes it serve at the profile's row for ``L``.
- **Continuous batching**: at most ``max_batch`` requests run; later arrivals wait (FIFO) and
  are admitted the moment a running request finishes. Time spent waiting adds to the TTFT.
- **TTFT** of a request admitted at ``t`` = ``factor * ttft_p99(tp, clock, type, load(t))``; the
  first token leaves at admission + TTFT.
- **TBT**: each following token leaves ``factor * tbt_p99(tp, clock, type, load)`` after the
  previous one, with the clock and load *at that token*, so locking a lower clock slows running
  requests at once.
- ``factor`` is drawn per request (one for TTFT, one for TBT) from a seeded RNG, uniform on
  ``[0.8, 1.002]``: its 99th percentile is exactly 1, so the P99 over requests is the profile's P99.
- **Power** (whole instance, all TP GPUs) = the profile's power at the current clock and load,
  averaged over the request types seen in the window (or running). Below the lowest measured
  load it is the lowest measured point's power, as ``Profile.lookup`` gives it (over- rather than
  under-estimated; falling linearly towards idle there biased a run at the lowest measured load
  12 % low, because the windowed load fluctuates around it). It is ``idle_power_w * tp`` only when
  nothing arrived in the window and nothing runs.
- Clocks outside the profile's measured range are clamped to it, loads above the highest measured
  load are clamped to it (the waiting queue then models the overload).
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import Counter, deque
from dataclasses import dataclass

from wattgate.profiles.classes import RequestType
from wattgate.profiles.table import Profile, ProfilePoint

FACTOR_LO = 0.8
FACTOR_HI = 1.0 + (1.0 - FACTOR_LO) * 0.01 / 0.99  # so that P99 of U(LO, HI) is exactly 1.0


class SimEngineError(Exception):
    """Base exception of the simulated engine (bad settings, a profile that cannot serve the request)."""


@dataclass(frozen=True)
class SimSettings:
    tp: int
    max_batch: int = 256
    load_window_s: float = 30.0
    idle_power_w: float = 70.0  # per GPU
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise SimEngineError(f"max batch must be >= 1, got {self.max_batch}")
        if not self.load_window_s > 0:
            raise SimEngineError(f"load window must be > 0 s, got {self.load_window_s}")
        if self.idle_power_w < 0:
            raise SimEngineError(f"idle power must be >= 0 W, got {self.idle_power_w}")


@dataclass
class SimRequest:
    """One request's progress, in simulated seconds."""

    request_id: str
    rtype: RequestType
    input_tokens: int
    output_tokens: int
    arrival_s: float
    ttft_factor: float
    tbt_factor: float
    admitted_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    emitted: int = 0
    load_rps: float = 0.0  # the load when admitted
    sm_clock_mhz: int = 0  # the clock when admitted
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.cancelled or self.emitted >= self.output_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tbt_mean_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None or self.emitted < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.emitted - 1)


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    index: int  # 0-based token index
    at_s: float  # when the model emits it (simulated seconds)
    last: bool


class _Window:
    """Arrival times (ascending) and types over the recent past."""

    def __init__(self, width_s: float) -> None:
        self.width_s = width_s
        self.times: list[float] = []
        self.types: list[RequestType] = []

    def add(self, t: float, rtype: RequestType) -> None:
        self.times.append(t)
        self.types.append(rtype)

    def prune(self, now_s: float) -> None:
        # keep two widths so that events processed slightly in the past still see their arrivals
        cut = bisect.bisect_right(self.times, now_s - 2 * self.width_s)
        if cut > 256 or (cut and cut == len(self.times)):
            del self.times[:cut], self.types[:cut]

    def rate(self, at_s: float) -> float:
        hi = bisect.bisect_right(self.times, at_s)
        lo = bisect.bisect_right(self.times, at_s - self.width_s)
        return (hi - lo) / self.width_s

    def mix(self, at_s: float) -> Counter[RequestType]:
        hi = bisect.bisect_right(self.times, at_s)
        lo = bisect.bisect_right(self.times, at_s - self.width_s)
        return Counter(self.types[lo:hi])


class BatchModel:
    """Continuous batching of one engine instance in simulated time (see the module docstring)."""

    def __init__(self, profile: Profile, settings: SimSettings) -> None:
        if settings.tp not in profile.tps:
            raise SimEngineError(f"profile {profile.model}/{profile.gpu} has no TP{settings.tp} (has {profile.tps})")
        self.profile = profile
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._window = _Window(settings.load_window_s)
        self._requests: dict[str, SimRequest] = {}
        self._waiting: deque[str] = deque()
        self._running: set[str] = set()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._points: dict[tuple[RequestType, float, float], ProfilePoint] = {}
        self.finished_total = 0
        self.generation_tokens_total = 0
        self.prompt_tokens_total = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def get(self, request_id: str) -> SimRequest | None:
        return self._requests.get(request_id)

    def load_rps(self, at_s: float) -> float:
        return self._window.rate(at_s)

    def supports(self, rtype: RequestType) -> bool:
        return rtype in self.profile.request_types

    # -- requests --------------------------------------------------------------------------
    def submit(
        self,
        request_id: str,
        rtype: RequestType,
        input_tokens: int,
        output_tokens: int,
        *,
        now_s: float,
        clock_mhz: int,
    ) -> SimRequest:
        if not self.supports(rtype):
            raise SimEngineError(f"the profile has no measurements for request type {rtype}")
        if output_tokens < 1:
            raise SimEngineError("a request must generate at least one token")
        req = SimRequest(
            request_id,
            rtype,
            input_tokens,
            output_tokens,
            now_s,
            ttft_factor=self._factor(),
            tbt_factor=self._factor(),
        )
        self._requests[request_id] = req
        self._window.prune(now_s)
        self._window.add(now_s, rtype)
        self.prompt_tokens_total += input_tokens
        self._waiting.append(request_id)
        self._admit(now_s, clock_mhz)
        return req

    def cancel(self, request_id: str, now_s: float, clock_mhz: int) -> None:
        """The client went away: free its slot (or its place in the queue) at ``now_s``."""
        req = self._requests.get(request_id)
        if req is None or req.done:
            self._requests.pop(request_id, None)
            return
        req.cancelled = True
        if request_id in self._waiting:
            self._waiting.remove(request_id)
        self._running.discard(request_id)
        self._requests.pop(request_id, None)
        self._admit(now_s, clock_mhz)

    def release(self, request_id: str) -> None:
        """Forget a finished request once its response is complete."""
        req = self._requests.get(request_id)
        if req is not None and req.done:
            del self._requests[request_id]

    # -- time ------------------------------------------------------------------------------
    def next_event_s(self) -> float | None:
        while self._heap and self._heap[0][2] not in self._running:
            heapq.heappop(self._heap)  # cancelled
        return self._heap[0][0] if self._heap else None

    def advance(self, now_s: float, clock_mhz: int) -> list[TokenEvent]:
        """Emit every token due up to ``now_s``, in time order, at its scheduled (simulated) time."""
        events: list[TokenEvent] = []
        while self._heap and self._heap[0][0] <= now_s:
            at, _, rid = heapq.heappop(self._heap)
            req = self._requests.get(rid)
            if req is None or rid not in self._running:
                continue
            if req.first_token_s is None:
                req.first_token_s = at
            req.last_token_s = at
            req.emitted += 1
            self.generation_tokens_total += 1
            events.append(TokenEvent(rid, req.emitted - 1, at, req.emitted >= req.output_tokens))
            if req.emitted >= req.output_tokens:
                self._running.discard(rid)
                self.finished_total += 1
                self._admit(at, clock_mhz)
            else:
                gap = self._point(req.rtype, clock_mhz, self._window.rate(at)).tbt_p99_s * req.tbt_factor
                self._push(at + gap, rid)
        self._window.prune(now_s)
        return events

    def power_w(self, now_s: float, clock_mhz: int) -> float:
        """Modelled power of the whole instance (all its GPUs), watts."""
        idle = self.settings.idle_power_w * self.settings.tp
        mix = self._window.mix(now_s)
        for rid in self._running:  # a long request still running counts even after its arrival left the window
            mix[self._requests[rid].rtype] = max(mix[self._requests[rid].rtype], 1)
        total = sum(mix.values())
        if total == 0:
            return idle
        load = self._window.rate(now_s)
        power = 0.0
        for rtype, n in mix.items():
            power += n / total * self._point(rtype, clock_mhz, load).power_w
        return power

    # -- internals -------------------------------------------------------------------------
    def _factor(self) -> float:
        return FACTOR_LO + (FACTOR_HI - FACTOR_LO) * self._rng.random()

    def _push(self, at_s: float, rid: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_s, self._seq, rid))

    def _admit(self, now_s: float, clock_mhz: int) -> None:
        while self._waiting and len(self._running) < self.settings.max_batch:
            rid = self._waiting.popleft()
            req = self._requests[rid]
            load = self._window.rate(now_s)
            if req.arrival_s == now_s:  # what an arrival sees is the others' rate (PASTA), not itself
                load = max(0.0, load - 1.0 / self.settings.load_window_s)
            req.admitted_s, req.load_rps, req.sm_clock_mhz = now_s, load, clock_mhz
            self._running.add(rid)
            self._push(now_s + self._point(req.rtype, clock_mhz, load).ttft_p99_s * req.ttft_factor, rid)

    def _point(self, rtype: RequestType, clock_mhz: float, load: float) -> ProfilePoint:
        key = (rtype, clock_mhz, load)  # load only changes on arrivals: most tokens hit the cache
        point = self._points.get(key)
        if point is None:
            if len(self._points) > 4096:
                self._points.clear()
            point = self._points[key] = self._lookup(rtype, clock_mhz, load)
        return point

    def _lookup(self, rtype: RequestType, clock_mhz: float, load: float) -> ProfilePoint:
        tp = self.settings.tp
        clocks = self.profile.clocks(tp, rtype)
        clock = min(max(clock_mhz, clocks[0]), clocks[-1])
        return self.profile.lookup(tp, clock, rtype, min(load, self.profile.max_measured_load(tp, clock, rtype)))
