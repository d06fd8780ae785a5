"""Energy attribution: each interval of an instance's energy counter, split among the requests that ran in it.

The rule (README, "Energy per request"):

- The instance's agent publishes its energy counter every second (``InstanceEnergy``: NVML's total energy,
  measured, or the simulated GPUs' counter, modelled). Two consecutive readings bound an interval
  ``(a, b]`` with the energy ``E`` the counter grew by.
- A request's *work* is its tokens: its prompt tokens, each weighing ``prefill_weight`` of an output token
  (``energy_prefill_weight``, 0.1 by default: a prompt token is computed in a batch with thousands of others,
  an output token costs a whole step's share; ``bench/energy_attribution.py`` chose it), spread evenly over
  ``[start, first byte]`` (prefill), and its output tokens evenly over ``[first byte, end]`` (decode). A
  non-streamed request has no first byte before its end: all its work spreads evenly over ``[start, end]``.
- ``E`` goes to the requests that worked in the interval in proportion to their work in it. An interval in
  which none worked is the instance's idle energy while it was held for its pool: booked to the pool and
  the instance's model under the key ``IDLE_KEY``. So every joule of the counter is booked exactly once.
- An interval is *settled* once every request that worked in it has ended, or once it is older than
  ``max_open_s`` (requests still open then count with their work so far: prompt tokens, and the output
  tokens streamed so far). A request is *booked* (one ``Booking``) when the intervals up to its end are
  settled: the response it got carried an ``estimate`` of that figure, made when it ended.
- A counter that goes down or back in time (driver reload, a new simulated GPU), or changes source,
  starts a new series: the interval across the break is lost and counted (``gaps``).

Pure: no I/O, no clock of its own (every call takes ``now``, unix seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wattgate.planner.contract import IDLE_KEY

JPT_DECAY = 0.9  # per busy interval (about a second): the estimates follow the last ten seconds or so


@dataclass(eq=False)
class Work:
    """One request on one instance: its labels and the times and tokens that place its work."""

    request_id: str
    model: str
    key: str
    pool: str
    start: float
    input_tokens: int
    first: float | None = None  # first byte of a streamed answer
    end: float | None = None
    output_tokens: int = 0  # so far while open (streamed events), the usage's count once ended
    status: str = ""  # set when the request is done
    done: bool = False
    energy_j: float = 0.0  # settled so far

    def work_in(self, a: float, b: float, now: float, prefill_weight: float = 1.0) -> float:
        """Work this request did in ``(a, b]`` (its work so far while it is open): output tokens, plus prompt
        tokens at ``prefill_weight`` each."""
        end = self.end if self.end is not None else now
        first = self.first
        prompt = self.input_tokens * prefill_weight
        if first is None or not self.start < first < end:
            return (prompt + self.output_tokens) * _share(a, b, self.start, end)
        return prompt * _share(a, b, self.start, first) + self.output_tokens * _share(a, b, first, end)

    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _share(a: float, b: float, lo: float, hi: float) -> float:
    """Part of ``[lo, hi]`` inside ``(a, b]``; a point span counts whole in the interval holding it."""
    if hi <= lo:
        return 1.0 if a < lo <= b else 0.0
    return max(0.0, min(b, hi) - max(a, lo)) / (hi - lo)


@dataclass(frozen=True)
class Booking:
    """Energy booked once: one finished request's (``request_id`` set) or one idle interval's."""

    model: str
    key: str
    pool: str
    status: str
    source: str
    energy_j: float
    tokens: int
    requests: int
    ts: float  # end of the last interval it covers (unix s)
    request_id: str = ""


@dataclass(frozen=True)
class _Sample:
    ts: float
    energy_j: float
    power_w: float


class InstanceLedger:
    """The unsettled readings and requests of one instance (see the module docstring)."""

    def __init__(self, instance: str, max_open_s: float = 600.0, prefill_weight: float = 1.0) -> None:
        self.instance = instance
        self.max_open_s = max_open_s
        self.prefill_weight = prefill_weight
        self.source = ""
        self.model = "-"
        self.pool = "-"
        self.gaps = 0
        self._samples: list[_Sample] = []  # [0] is the settled boundary
        self._works: list[Work] = []
        # energy and work of the busy settled intervals, each older one weighing JPT_DECAY less: their ratio is
        # the recent joules per unit of work the estimates use
        self._busy_j = self._busy_work = 0.0

    @property
    def metered(self) -> bool:
        return bool(self._samples)

    @property
    def settled_until(self) -> float | None:
        return self._samples[0].ts if self._samples else None

    def reading(self, ts: float, energy_j: float, power_w: float, source: str) -> bool:
        """A counter reading; False when it starts a new series (the interval before it is lost)."""
        last = self._samples[-1] if self._samples else None
        if last is not None and ts <= last.ts:
            return True  # the same reading again (the agent writes every second, we may read faster)
        if last is not None and source == self.source and energy_j >= last.energy_j:
            self._samples.append(_Sample(ts, energy_j, power_w))
            return True
        broke = last is not None
        if broke:
            self.gaps += 1
        self._samples = [_Sample(ts, energy_j, power_w)]
        self.source = source
        return not broke

    def add(self, work: Work) -> None:
        self._works.append(work)

    def settle(self, now: float) -> list[Booking]:
        """Settle what can be, and book the requests and idle intervals it completes."""
        out: list[Booking] = []
        if len(self._samples) < 2:
            return self._book_done(out)
        opened = [w.start for w in self._works if not w.done]
        horizon = min(opened) if opened else math.inf
        forced = now - self.max_open_s
        n = 0
        for a, b in zip(self._samples, self._samples[1:], strict=False):
            if b.ts > horizon and b.ts > forced:
                break
            self._split(a, b, now, out)
            n += 1
        del self._samples[:n]
        return self._book_done(out)

    def _split(self, a: _Sample, b: _Sample, now: float, out: list[Booking]) -> None:
        energy = b.energy_j - a.energy_j
        parts = [(w, w.work_in(a.ts, b.ts, now, self.prefill_weight)) for w in self._works if w.start <= b.ts]
        total = sum(p for _, p in parts)
        if total <= 0:
            if energy > 0:
                out.append(Booking(self.model, IDLE_KEY, self.pool, "idle", self.source, energy, 0, 0, b.ts))
            return
        for w, p in parts:
            w.energy_j += energy * p / total
        self._busy_j = self._busy_j * JPT_DECAY + energy
        self._busy_work = self._busy_work * JPT_DECAY + total

    def _book_done(self, out: list[Booking]) -> list[Booking]:
        """Book the done requests whose whole span is settled."""
        until = self.settled_until
        keep = []
        for w in self._works:
            if w.done and until is not None and w.end is not None and w.end <= until:
                if not w.tokens() and not w.energy_j:
                    continue  # an attempt that never answered: nothing to book
                out.append(_booking(w, self.source, until))
            else:
                keep.append(w)
        self._works = keep
        return out

    def estimate(self, work: Work, now: float) -> float:
        """The energy ``work`` will be booked, as far as it is known now: what is settled, plus its work since
        at the instance's recent joules per unit of work (its last power shared equally, before one is known)."""
        since = self.settled_until
        if since is None:
            return 0.0
        end = work.end if work.end is not None else now
        rest = work.work_in(since, max(end, since), now, self.prefill_weight)
        if self._busy_work > 0:
            return work.energy_j + rest * self._busy_j / self._busy_work
        live = sum(1 for w in self._works if w.end is None or w.end > since)
        return work.energy_j + self._samples[-1].power_w * max(end - since, 0.0) / max(live, 1)

    def drop_stale(self, now: float, stale_s: float) -> list[Booking]:
        """No reading for ``stale_s``: book the done requests with what was settled (partial), forget the series."""
        if not self._samples or now - self._samples[-1].ts <= stale_s:
            return []
        self._samples = []
        self.gaps += 1
        done = [w for w in self._works if w.done]
        self._works = [w for w in self._works if not w.done]
        return [_booking(w, self.source, now) for w in done]

    @property
    def idle(self) -> bool:
        """No request and no reading left: the ledger can go."""
        return not self._works and not self._samples


def _booking(w: Work, source: str, ts: float) -> Booking:
    return Booking(w.model, w.key, w.pool, w.status, source, w.energy_j, w.tokens(), 1, ts, w.request_id)
