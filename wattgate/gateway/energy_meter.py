"""The gateway's energy meter: instance counters in (once a second), bookings out to the metrics and Redis.

The request path calls ``start`` and ``finish`` (in memory, no I/O); ``run`` works in the background: it
applies the agents' latest counters (one Redis read a second for all instances), settles the ledgers
(``energy``) and hands the bookings to the metrics and to the store's buffered minute totals. With ``share``
(the store) the ledgers settle across gateway replicas (``tick``: two or three Redis round trips a second for
all instances, see ``energy``); while Redis is away a replica settles intervals older than ``LOCAL_AFTER_S``
over its own requests, and flags those figures ``local``.
API keys are labelled by a hash of the key (``key-`` and 12 hex digits of its SHA-256), or by the name
``energy_key_names`` gives that hash; a request without a key is ``anonymous``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from wattgate.carbon import CarbonIntensity
from wattgate.gateway.energy import Booking, InstanceLedger, Work
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.planner.contract import InstanceEnergy

log = logging.getLogger("wattgate.gateway.energy")
STALE_S = 30.0  # no reading for this long: the instance's series ends (its done requests are booked as they are)
LOCAL_AFTER_S = 10.0  # Redis away this long: a replica settles the older intervals over its own requests
REPLICA_LIVE_S = 10.0  # a replica whose watermark is older than this no longer holds the others' books


class EnergyShare(Protocol):
    """Where replicas meet (``store.RedisStore``): their work per second, watermarks and idle claims."""

    async def share_energy_work(
        self,
        replica: str,
        now: float,
        ttl_s: int,
        live_s: float,
        *,
        unsent: Mapping[str, Mapping[int, float]],
        marks: Mapping[str, int],
        windows: Mapping[str, tuple[int, int]],
    ) -> dict[str, tuple[int, dict[int, float]]] | None: ...

    async def claim_idle_seconds(
        self, replica: str, ttl_s: int, seconds: Mapping[str, Iterable[int]]
    ) -> dict[str, dict[int, bool]] | None: ...


class EnergySink(Protocol):
    def record_energy(self, bookings: Iterable[Booking]) -> None: ...


@dataclass(frozen=True)
class Estimate:
    """What a response says about its energy (``usage.energy``)."""

    energy_j: float
    source: str
    local: bool = False  # this replica could not reach the others' work (Redis away): its own requests' split

    def usage(self) -> dict[str, object]:
        split = "this replica" if self.local else "all replicas"
        return {"joules": round(self.energy_j, 3), "source": self.source, "estimate": True, "split": split}


def key_label(key: str | None, names: Mapping[str, str]) -> str:
    if not key:
        return "anonymous"
    label = "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return names.get(label, label)


def parse_key_names(items: Iterable[str]) -> dict[str, str]:
    """``key-<12 hex>=name`` items into a mapping; ``ValueError`` for anything else."""
    out = {}
    for item in items:
        label, sep, name = item.partition("=")
        if not sep or not label.startswith("key-") or len(label) != 16 or not name:
            raise ValueError(f"energy_key_names: {item!r} is not key-<12 hex digits>=NAME")
        out[label] = name
    return out


class EnergyMeter:
    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        carbon: CarbonIntensity,
        max_open_s: float = 600.0,
        prefill_weight: float = 1.0,
        key_names: Mapping[str, str] | None = None,
        sink: EnergySink | None = None,
        share: EnergyShare | None = None,
        replica: str = "",
    ) -> None:
        self.metrics = metrics
        self.carbon = carbon
        self.max_open_s = max_open_s
        self.prefill_weight = prefill_weight
        self.key_names = dict(key_names or {})
        self.sink = sink
        self.ledgers: dict[str, InstanceLedger] = {}
        self.share = share
        self.replica = replica or uuid.uuid4().hex[:12]
        self.share_ttl_s = int(max(3600.0, 2 * max_open_s))
        self.shared_ok_at: float | None = None  # the last shared settle that reached Redis (None: none yet)
        self.local = False  # Redis away for LOCAL_AFTER_S: settling over this replica's requests alone

    # -- the request path (no I/O) --------------------------------------------------------------
    def start(self, instance: str, work: Work) -> Work | None:
        """The request went to ``instance``: ``work``, or None when that instance has no energy counter."""
        ledger = self.ledgers.get(instance)
        if ledger is None or not ledger.metered:
            return None
        ledger.add(work)
        return work

    def finish(self, instance: str, work: Work, now: float, input_tokens: int, output_tokens: int) -> Estimate | None:
        """The answer's last byte came: fix the request's tokens and estimate its energy."""
        if work.end is None:
            work.end = now
        work.input_tokens, work.output_tokens = max(input_tokens, 0), max(output_tokens, 0)
        ledger = self.ledgers.get(instance)
        if ledger is None or not ledger.source:
            return None
        return Estimate(ledger.estimate(work, now), ledger.source, self.local or work.local)

    @staticmethod
    def done(work: Work, status: int, now: float) -> None:
        """The request is over (whatever happened): its booking may go out once its intervals settle."""
        if work.end is None:
            work.end = now
        work.status, work.done = str(status), True

    # -- the background side ----------------------------------------------------------------------
    def apply(self, readings: Iterable[InstanceEnergy], labels: Mapping[str, tuple[str, str]], now: float) -> None:
        """The agents' latest counters (those older than ``STALE_S`` are an agent gone: ignored); ``labels``
        gives each instance's (model, pool) for its idle energy."""
        for r in readings:
            if r.ts < now - STALE_S:
                continue
            ledger = self.ledgers.get(r.instance)
            if ledger is None:
                ledger = self.ledgers[r.instance] = InstanceLedger(
                    r.instance, self.max_open_s, self.prefill_weight, self.carbon
                )
            model, pool = labels.get(r.instance, (ledger.model, ledger.pool))
            ledger.model, ledger.pool = model, pool
            if not ledger.reading(r.ts, r.energy_j, r.power_w, r.source):
                self.metrics.energy_gaps.labels(r.instance).inc()
                log.warning("energy counter of %s went back or changed source: a new series starts", r.instance)

    def settle(self, now: float, settled: Mapping[str, list[Booking]] | None = None) -> list[Booking]:
        """Book what the ledgers settle by themselves (``settled``: what a shared settle gave each instance
        instead), drop the stale ones, update the gauges."""
        out: list[Booking] = []
        for iid, ledger in list(self.ledgers.items()):
            gaps = ledger.gaps
            stale = ledger.drop_stale(now, STALE_S)
            if ledger.gaps > gaps:
                self.metrics.energy_gaps.labels(iid).inc()
            out += stale + (settled.get(iid, []) if settled is not None else ledger.settle(now))
            if ledger.idle:
                del self.ledgers[iid]
                with contextlib.suppress(KeyError):
                    self.metrics.energy_settled.remove(iid)
            elif ledger.settled_until is not None:
                self.metrics.energy_settled.labels(iid).set(ledger.settled_until)
        self.book(out)
        return out

    async def tick(self, now: float) -> list[Booking]:
        """Settle across replicas (``share``): publish this replica's final work and watermarks, read every live
        replica's lowest watermark and the work totals, claim the idle seconds, settle. While Redis is away,
        after ``LOCAL_AFTER_S``, the intervals older than that settle over this replica's requests (``local``)."""
        if self.share is None or not self.ledgers:
            return self.settle(now)
        unsent: dict[str, dict[int, float]] = {}
        marks: dict[str, int] = {}
        windows: dict[str, tuple[int, int]] = {}
        for iid, ledger in self.ledgers.items():
            marks[iid] = ledger.publish(now)
            unsent[iid] = ledger.take_unsent()
            window = ledger.window()
            if window is not None:
                windows[iid] = window
        got = await self.share.share_energy_work(
            self.replica, now, self.share_ttl_s, REPLICA_LIVE_S, unsent=unsent, marks=marks, windows=windows
        )
        if got is None:
            for iid, work in unsent.items():
                if iid in self.ledgers:
                    self.ledgers[iid].restore_unsent(work)
            return self._settle_locally(now)
        if self.local:
            log.info("energy: Redis is back, settling across gateway replicas again")
        self.shared_ok_at, self.local = now, False
        idle: dict[str, list[int]] = {}
        for iid, (mark, totals) in got.items():
            led = self.ledgers.get(iid)
            seconds = led.idle_seconds(mark, totals) if led is not None else []
            if seconds:
                idle[iid] = seconds
        claims = await self.share.claim_idle_seconds(self.replica, self.share_ttl_s, idle)
        settled: dict[str, list[Booking]] = {}
        for iid, ledger in self.ledgers.items():
            until, totals = got.get(iid, (-math.inf, {}))  # no window: nothing to settle yet
            if claims is not None:
                ledger.claimed(claims.get(iid, {}))
            settled[iid] = ledger.settle_shared(now, until, totals)
        return self.settle(now, settled)

    def _settle_locally(self, now: float) -> list[Booking]:
        since = self.shared_ok_at
        if since is not None and now - since < LOCAL_AFTER_S:
            return self.settle(now, {})  # a blip: wait for the others' work
        if not self.local:
            log.warning(
                "energy: Redis unreachable for %.0f s; intervals older than that are split over this replica's "
                "requests alone (other replicas may book them too): figures flagged local",
                LOCAL_AFTER_S,
            )
        self.local = True
        settled = {iid: ledger.settle(now, until=now - LOCAL_AFTER_S) for iid, ledger in self.ledgers.items()}
        return self.settle(now, settled)

    def book(self, bookings: list[Booking]) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        for b in bookings:
            self.metrics.book_energy(b)
            if b.local:
                self.metrics.energy_local_joules.labels(b.model, b.pool, b.source).inc(b.energy_j)
            if debug and b.request_id:
                log.debug("request %s booked: %.3f J (%s, settled)", b.request_id, b.energy_j, b.source)
        if bookings and self.sink is not None:
            self.sink.record_energy(bookings)

    async def run(
        self,
        read: Callable[[], Awaitable[list[InstanceEnergy]]],
        labels: Callable[[], Mapping[str, tuple[str, str]]],
        clock: Callable[[], float],
        interval_s: float = 1.0,
    ) -> None:
        """Every ``interval_s``: read the counters, settle."""
        while True:
            now = clock()
            self.apply(await read(), labels(), now)  # the store answers [] while Redis is away
            await self.tick(now)
            await asyncio.sleep(interval_s)
