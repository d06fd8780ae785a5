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
- Several gateway replicas (``settle_shared``): each replica publishes its requests' work per unix second
  (``publish``: a done request's whole work, an open one older than ``max_open_s`` its work so far) to Redis, with
  a watermark (the second before which all its work is in). An interval settles once every live replica's
  watermark passed it; it is cut at whole seconds (the counter interpolated), and each second's piece goes to
  all replicas' requests by their work in that second (the same shares for every replica, however its readings
  fell, so they add up to one), or, in a second no request worked in, to the replica that claimed that second
  first (one atomic claim per second): so every joule is booked once over all replicas. Without Redis a replica
  falls back to the rule above over its own requests (``settle``) and says so (``local``): other replicas may book
  the same interval.
- A counter that goes down or back in time (driver reload, a new simulated GPU), or changes source,
  starts a new series: the interval across the break is lost and counted (``gaps``).

Pure: no I/O, no clock of its own (every call takes ``now``, unix seconds).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from wattgate.carbon import CarbonIntensity
from wattgate.planner.contract import IDLE_KEY

EXACT_MAX = 64  # requests on an instance up to which an estimate applies the rule to its span (O(requests))
DECAY = 0.9  # per settled busy interval, for the joules per unit of work estimates use beyond EXACT_MAX


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
    local: bool = False  # some of energy_j was split over this replica's requests alone (Redis unreachable)
    buckets: dict[int, float] = field(default_factory=dict)  # shared mode: its work published per unix second
    published_until: int | None = None  # shared mode, open: its work before this second is published
    published: bool = False  # shared mode: all its work is published
    carbon_g: float = 0.0  # gCO2e of energy_j: each interval's share at the intensity of its time (modelled)

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

    def last_work_s(self) -> float:
        """The time after which it has no work in any interval (shared mode: the end of its last second)."""
        end = self.end if self.end is not None else self.start
        return max(end, max(self.buckets) + 1.0) if self.buckets else end


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
    carbon_g: float = 0.0  # gCO2e: each interval's energy at the carbon intensity of its time (modelled)
    local: bool = False  # (some of) it was split over this replica's requests alone: Redis was unreachable


@dataclass(frozen=True)
class _Sample:
    ts: float
    energy_j: float
    power_w: float


class InstanceLedger:
    """The unsettled readings and requests of one instance (see the module docstring)."""

    def __init__(
        self,
        instance: str,
        max_open_s: float = 600.0,
        prefill_weight: float = 1.0,
        carbon: CarbonIntensity | None = None,
    ) -> None:
        self.instance = instance
        self.carbon = carbon  # None: no carbon booked
        self.max_open_s = max_open_s
        self.prefill_weight = prefill_weight
        self.source = ""
        self.model = "-"
        self.pool = "-"
        self.gaps = 0
        self._samples: list[_Sample] = []  # [0] is the settled boundary
        self._works: list[Work] = []
        self._busy_j = self._busy_work = self._busy_n = 0.0  # decayed sums over the settled busy intervals
        self.shared = False  # set by the first shared settle: a local split after it is flagged ``local``
        self._mine = self._all = 0.0  # shared mode: decayed work of this replica's requests and of all replicas'
        self._unsent: dict[int, float] = {}  # shared mode: work per second published here, not yet in Redis
        self._claims: dict[int, bool] = {}  # shared mode: second -> whether this replica books its idle energy

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

    def settle(self, now: float, *, force: bool = False, until: float = math.inf) -> list[Booking]:
        """Settle what can be (``force``: every interval, open requests with their work so far; ``until``: no
        interval ending later), and book the requests and idle intervals it completes."""
        out: list[Booking] = []
        if len(self._samples) < 2:
            return self._book_done(out)
        opened = [w.start for w in self._works if not w.done]
        horizon = min(opened) if opened else math.inf
        forced = now if force else now - self.max_open_s
        n = 0
        for a, b in zip(self._samples, self._samples[1:], strict=False):
            if (b.ts > horizon and b.ts > forced) or b.ts > until:
                break
            self._split(a, b, now, out)
            n += 1
        del self._samples[:n]
        return self._book_done(out)

    def _split(self, a: _Sample, b: _Sample, now: float, out: list[Booking]) -> None:
        energy = b.energy_j - a.energy_j
        parts = [(w, w.work_in(a.ts, b.ts, now, self.prefill_weight)) for w in self._works if w.start <= b.ts]
        total = sum(p for _, p in parts)
        g_per_j = self.carbon.grams(1.0, (a.ts + b.ts) / 2) if self.carbon is not None else 0.0
        if total <= 0:
            if energy > 0:
                out.append(self._idle(energy, g_per_j, b.ts, local=self.shared))
            return
        for w, p in parts:
            w.energy_j += energy * p / total
            w.carbon_g += energy * p / total * g_per_j
            w.local = w.local or self.shared
        self._busy_j = self._busy_j * DECAY + energy
        self._busy_work = self._busy_work * DECAY + total
        self._busy_n = self._busy_n * DECAY + 1

    def _idle(self, energy: float, g_per_j: float, ts: float, *, local: bool = False) -> Booking:
        return Booking(
            self.model, IDLE_KEY, self.pool, "idle", self.source, energy, 0, 0, ts, "", energy * g_per_j, local
        )

    # -- several replicas (shared mode) -------------------------------------------------------------
    def publish(self, now: float) -> int:
        """Add this replica's new final work per unix second to ``unsent``: each done request's (the rest of it),
        each open one older than ``max_open_s`` its work so far before then. Returns the watermark: every second
        before it holds all of this replica's work on the instance."""
        mark = math.floor(now)
        forced = math.floor(now - self.max_open_s)
        pw = self.prefill_weight
        for w in self._works:
            if w.published:
                continue
            lo = w.published_until if w.published_until is not None else math.floor(w.start) - 1
            if w.done:
                hi = math.ceil(w.end if w.end is not None else now) + 1
            elif w.start < forced:
                hi = forced
            else:
                mark = min(mark, lo if w.published_until is not None else math.floor(w.start))
                continue
            for k in range(lo, hi):
                p = w.work_in(k, k + 1, now, pw)
                if p > 0:
                    w.buckets[k] = w.buckets.get(k, 0.0) + p
                    self._unsent[k] = self._unsent.get(k, 0.0) + p
            if w.done:
                w.published = True
            else:
                w.published_until = hi
                mark = min(mark, hi)
        return mark

    def take_unsent(self) -> dict[int, float]:
        out, self._unsent = self._unsent, {}
        return out

    def restore_unsent(self, unsent: Mapping[int, float]) -> None:
        """The send failed: keep it for the next one."""
        for k, v in unsent.items():
            self._unsent[k] = self._unsent.get(k, 0.0) + v

    def window(self) -> tuple[int, int] | None:
        """The seconds the unsettled intervals span (whose totals a shared settle needs), or None."""
        if len(self._samples) < 2:
            return None
        return math.floor(self._samples[0].ts), math.ceil(self._samples[-1].ts)

    def idle_seconds(self, until: float, totals: Mapping[int, float]) -> list[int]:
        """The seconds no request worked in, of the intervals settleable up to ``until``, not claimed yet."""
        out: set[int] = set()
        for a, b in zip(self._samples, self._samples[1:], strict=False):
            if b.ts > until:
                break
            if b.energy_j > a.energy_j:
                seconds = range(math.floor(a.ts), math.ceil(b.ts))
                out.update(k for k in seconds if totals.get(k, 0.0) <= 0 and k not in self._claims)
        return sorted(out)

    def claimed(self, claims: Mapping[int, bool]) -> None:
        self._claims.update(claims)

    def settle_shared(self, now: float, until: float, totals: Mapping[int, float]) -> list[Booking]:
        """Settle the intervals up to ``until`` (every live replica's watermark) by all replicas' work in them
        (``totals``: unix second -> work); an idle one needs the claims of its seconds (``claimed``)."""
        self.shared = True
        out: list[Booking] = []
        n = 0
        for a, b in zip(self._samples, self._samples[1:], strict=False):
            if b.ts > until or not self._split_shared(a, b, totals, out):
                break
            n += 1
        del self._samples[:n]
        if self._samples:
            floor = math.floor(self._samples[0].ts)
            self._claims = {k: v for k, v in self._claims.items() if k >= floor}
        return self._book_done(out)

    def _split_shared(self, a: _Sample, b: _Sample, totals: Mapping[int, float], out: list[Booking]) -> bool:
        """Split ``(a, b]`` at whole seconds (the counter interpolated): each second's piece goes to all replicas'
        requests by their work in that second (so any replica, however its readings fell, gives a second the same
        shares), or, when no request worked in it, to the replica that claimed it as idle."""
        energy = b.energy_j - a.energy_j
        if energy <= 0:
            return True
        seconds = range(math.floor(a.ts), math.ceil(b.ts))
        if any(totals.get(k, 0.0) <= 0 and k not in self._claims for k in seconds):
            return False  # an idle second whose claim is not known yet: the next settle
        g_per_j = self.carbon.grams(1.0, (a.ts + b.ts) / 2) if self.carbon is not None else 0.0
        per_s = energy / (b.ts - a.ts)
        idle = busy = total_work = mine_work = 0.0
        for k in seconds:
            piece = per_s * _overlap(a.ts, b.ts, k)
            total = totals.get(k, 0.0)
            if total <= 0:
                idle += piece if self._claims[k] else 0.0
                continue
            busy += piece
            total_work += total * _overlap(a.ts, b.ts, k)
            for w in self._works:
                p = w.buckets.get(k, 0.0)
                if p > 0:
                    w.energy_j += piece * p / total
                    w.carbon_g += piece * p / total * g_per_j
                    mine_work += p * _overlap(a.ts, b.ts, k)
        if idle > 0:
            out.append(self._idle(idle, g_per_j, b.ts))
        if busy > 0:
            self._busy_j = self._busy_j * DECAY + busy
            self._busy_work = self._busy_work * DECAY + total_work
            self._busy_n = self._busy_n * DECAY + 1
            self._mine = self._mine * DECAY + mine_work
            self._all = self._all * DECAY + total_work
        return True

    def _book_done(self, out: list[Booking]) -> list[Booking]:
        """Book the done requests whose whole span is settled (with no series left: with what they have)."""
        until = self.settled_until
        keep = []
        for w in self._works:
            if w.done and (until is None or w.last_work_s() <= until):
                if not w.tokens() and not w.energy_j:
                    continue  # an attempt that never answered: nothing to book
                out.append(_booking(w, self.source, until if until is not None else w.end or w.start))
            else:
                keep.append(w)
        self._works = keep
        return out

    def estimate(self, work: Work, now: float) -> float:
        """The energy ``work`` will be booked, as far as it is known now: what is settled, plus the rule applied
        to the rest of its span as one interval (the counter read or extrapolated at its power; the others'
        work so far, a non-streamed one still open decoding at this request's pace: continuous batching gives
        every running sequence a token per step). With more than ``EXACT_MAX`` requests on the instance, its
        work at the recent settled joules per unit of work instead, so the cost stays bounded. No I/O."""
        since = self.settled_until
        if since is None:
            return 0.0
        end = work.end if work.end is not None else now
        a = max(since, work.start)
        mine = work.work_in(a, end, now, self.prefill_weight) if end > a else 0.0
        if mine <= 0:
            return work.energy_j
        if len(self._works) > EXACT_MAX and self._busy_n >= 5:  # busy: the recent settled J per unit of work, O(1)
            return work.energy_j + mine * self._busy_j / self._busy_work
        first = work.first if work.first is not None else work.start
        pace = work.output_tokens / (end - first) if end > first else 0.0
        # shared mode: the other replicas' requests did their recent share of the work here too
        ours = self._mine / self._all if self.shared and self._all > 0 and self._mine > 0 else 1.0
        return work.energy_j + self._energy(a, end) * mine / self._work_between(a, end, now, pace) * ours

    def _work_between(self, a: float, b: float, now: float, pace: float) -> float:
        """Every request's work in ``(a, b]`` (``work_in`` inlined: this runs as each answer ends); an open one
        with nothing streamed counts as decoding at ``pace`` tokens/s."""
        pw, total = self.prefill_weight, 0.0
        for w in self._works:
            start, end, first = w.start, w.end, w.first
            if start >= b or (end is not None and end <= a):
                continue
            if end is None:
                end = now
                if first is None:
                    total += pace * max(min(b, now) - max(a, start), 0.0)
            prompt = w.input_tokens * pw
            if first is None or not start < first < end:
                span = end - start
                part = (min(b, end) - max(a, start)) / span if span > 0 else float(a < start <= b)
                total += (prompt + w.output_tokens) * max(part, 0.0)
                continue
            total += prompt * max(min(b, first) - max(a, start), 0.0) / (first - start)
            total += w.output_tokens * max(min(b, end) - max(a, first), 0.0) / (end - first)
        return total

    def _energy(self, a: float, b: float) -> float:
        """The counter's growth over ``[a, b]``: interpolated between readings, at the last power beyond them."""
        return self._counter(b) - self._counter(a)

    def _counter(self, t: float) -> float:
        s = self._samples
        if t >= s[-1].ts:
            return s[-1].energy_j + s[-1].power_w * (t - s[-1].ts)
        k = bisect.bisect_right(s, t, key=lambda x: x.ts)
        if k == 0:
            return s[0].energy_j
        lo, hi = s[k - 1], s[k]
        return lo.energy_j + (hi.energy_j - lo.energy_j) * (t - lo.ts) / (hi.ts - lo.ts)

    def drop_stale(self, now: float, stale_s: float) -> list[Booking]:
        """No reading for ``stale_s``: book the done requests with what was settled (partial), forget the series."""
        if not self._samples or now - self._samples[-1].ts <= stale_s:
            return []
        out = self.settle(now, force=True)  # what the readings there are can still tell
        self._samples = []
        done = [w for w in self._works if w.done]
        self._works = [w for w in self._works if not w.done]
        if self._works or any(w.end is not None and w.end > w.start for w in done):
            self.gaps += 1  # requests were cut off from their energy (an instance stopped cleanly is not a gap)
        return out + [_booking(w, self.source, now) for w in done if w.tokens() or w.energy_j]

    @property
    def idle(self) -> bool:
        """No request and no reading left: the ledger can go."""
        return not self._works and not self._samples


def _overlap(a: float, b: float, k: int) -> float:
    """Seconds of ``(a, b]`` inside the unix second ``[k, k + 1)``."""
    return max(0.0, min(b, k + 1.0) - max(a, float(k)))


def _booking(w: Work, source: str, ts: float) -> Booking:
    return Booking(
        w.model, w.key, w.pool, w.status, source, w.energy_j, w.tokens(), 1, ts, w.request_id, w.carbon_g, w.local
    )
