"""Everything the gateway says to and reads from Redis (the only gateway module that imports redis).

Writes go through bounded in-memory buffers flushed in the background by pipeline, so a down or
slow Redis never slows a request: when a buffer is full the record is dropped and counted. Reads
of the instance registry and of the plan keep the last good ones when Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wattgate.gateway.energy import Booking
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.planner.contract import (
    ENERGY_MINUTE_TTL_S,
    LOAD_MINUTE_TTL_S,
    LOAD_SECOND_TTL_S,
    OBSERVATIONS_MAXLEN,
    ContractError,
    InstanceEnergy,
    InstanceRecord,
    Keys,
    NodeTelemetry,
    Observation,
    Plan,
    energy_field,
    load_field,
)

log = logging.getLogger("wattgate.gateway.store")
T = TypeVar("T")

_FLUSH_BATCH = 2000
_MAX_LOAD_SLOTS = 20_000  # (second, pool) cells kept while Redis is away (about 40 min of 9 pools)


class RedisStore:
    """Load windows and observations out; instance records in."""

    def __init__(self, url: str, keys: Keys, metrics: GatewayMetrics, buffer: int, timeout_s: float = 1.0) -> None:
        self.keys = keys
        self.metrics = metrics
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._obs: collections.deque[str] = collections.deque()
        self._obs_cap = buffer
        self._load: dict[tuple[int, str], list[int]] = {}
        # (minute, labels) -> J, tokens, requests, gCO2e, J split locally
        self._energy: dict[tuple[int, str, str, str, str, str], list[float]] = {}
        self.connected = False

    # -- writes (called on the request path: no await, no I/O) --------------------------------
    def record_load(self, pool: str, now: float, input_tokens: int, output_tokens: int) -> None:
        key = (int(now), pool)
        cell = self._load.get(key)
        if cell is None:
            if len(self._load) >= _MAX_LOAD_SLOTS:
                self._load.pop(next(iter(self._load)))
                self.metrics.redis_dropped.labels("load").inc()
            cell = self._load[key] = [0, 0, 0]
        cell[0] += 1
        cell[1] += input_tokens
        cell[2] += output_tokens

    def record_observation(self, obs: Observation) -> None:
        if len(self._obs) >= self._obs_cap:
            self.metrics.redis_dropped.labels("observation").inc()
            return
        self._obs.append(obs.to_json())

    def record_energy(self, bookings: Iterable[Booking]) -> None:
        """Add bookings to their minute's totals (the energy meter calls this once a second)."""
        for b in bookings:
            key = (int(b.ts) // 60, b.model, b.key, b.pool, b.status, b.source)
            cell = self._energy.get(key)
            if cell is None:
                if len(self._energy) >= _MAX_LOAD_SLOTS:
                    self._energy.pop(next(iter(self._energy)))
                    self.metrics.redis_dropped.labels("energy").inc()
                cell = self._energy[key] = [0.0, 0.0, 0.0, 0.0, 0.0]
            cell[0] += b.energy_j
            cell[1] += b.tokens
            cell[2] += b.requests
            cell[3] += b.carbon_g
            cell[4] += b.energy_j if b.local else 0.0

    @property
    def pending(self) -> int:
        return len(self._obs) + len(self._load) + len(self._energy)

    # -- background ----------------------------------------------------------------------------
    async def flush(self) -> bool:
        """Send what is buffered in one pipeline; on failure keep it (bounded) for the next try."""
        load, self._load = self._load, {}
        energy, self._energy = self._energy, {}
        batch = [self._obs.popleft() for _ in range(min(len(self._obs), _FLUSH_BATCH))]
        if not load and not batch and not energy:
            return True
        pipe = self.client.pipeline(transaction=False)
        for (minute, *labels), (joules, tokens, requests, carbon_g, local_j) in energy.items():
            key = self.keys.energy_minute(minute)
            pipe.hincrbyfloat(key, energy_field("joules", *labels), joules)
            pipe.hincrbyfloat(key, energy_field("carbon_g", *labels), carbon_g)
            if local_j:
                pipe.hincrbyfloat(key, energy_field("local_j", *labels), local_j)
            if requests:
                pipe.hincrby(key, energy_field("tokens", *labels), int(tokens))
                pipe.hincrby(key, energy_field("requests", *labels), int(requests))
            pipe.expire(key, ENERGY_MINUTE_TTL_S)
        for (second, pool), (req, tin, tout) in load.items():
            for key, ttl in (
                (self.keys.load_second(second), LOAD_SECOND_TTL_S),
                (self.keys.load_minute(second // 60), LOAD_MINUTE_TTL_S),
            ):
                pipe.hincrby(key, load_field(pool, "requests"), req)
                pipe.hincrby(key, load_field(pool, "input_tokens"), tin)
                pipe.hincrby(key, load_field(pool, "output_tokens"), tout)
                pipe.expire(key, ttl)
        for doc in batch:
            pipe.xadd(self.keys.observations, {"json": doc}, maxlen=OBSERVATIONS_MAXLEN, approximate=True)
        try:
            await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._requeue(load, batch)
            for cell_key, cell in energy.items():
                mine = self._energy.setdefault(cell_key, [0.0, 0.0, 0.0, 0.0, 0.0])
                for n in range(5):
                    mine[n] += cell[n]
            self._failed("flush", exc)
            return False
        self._ok()
        return True

    def _requeue(self, load: dict[tuple[int, str], list[int]], batch: list[str]) -> None:
        for key, cell in load.items():
            mine = self._load.setdefault(key, [0, 0, 0])
            for n in range(3):
                mine[n] += cell[n]
        room = self._obs_cap - len(self._obs)
        keep = batch[:room] if room > 0 else []
        self._obs.extendleft(reversed(keep))
        if len(keep) < len(batch):
            self.metrics.redis_dropped.labels("observation").inc(len(batch) - len(keep))

    async def run_flusher(self, interval_s: float, stop: asyncio.Event | None = None) -> None:
        """Flush every ``interval_s``, backing off while Redis fails. With ``stop``: flush once more when it is
        set, then return (cancelling the task mid-flush would lose the batch it holds)."""
        backoff = interval_s
        while stop is None or not stop.is_set():
            if stop is None:
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
            ok = await self.flush()
            backoff = interval_s if ok else min(max(backoff * 2, 0.25), 2.0)

    # -- instance registry ---------------------------------------------------------------------
    async def load_instances(self) -> list[InstanceRecord]:
        raw = await self.client.hgetall(self.keys.instances)
        return InstanceRecord.registry(raw, lambda key, exc: log.warning("ignoring instance record %s: %s", key, exc))

    async def watch_instances(self, apply: Callable[[list[InstanceRecord]], None], refresh_s: float) -> None:
        """Apply the registry now, on every instance event, and every ``refresh_s`` (missed events)."""

        def stale(flag: int) -> None:
            self.metrics.registry_stale.set(flag)

        await self._watch(
            self.keys.instance_events, self.load_instances, apply, refresh_s, what="registry", stale=stale
        )

    # -- instance energy counters ----------------------------------------------------------------
    async def load_energy(self) -> list[InstanceEnergy]:
        """The agents' latest instance energy counters (one HGETALL); [] while Redis is away."""
        try:
            raw = await self.client.hgetall(self.keys.energy)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("energy", exc)
            return []
        out = []
        for key, value in raw.items():
            try:
                out.append(InstanceEnergy.from_json(value))
            except ContractError as exc:
                log.warning("ignoring energy counter %s: %s", key, exc)
        return out

    # -- energy work shared by gateway replicas (gateway/energy.py, settle_shared) -----------------------
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
    ) -> dict[str, tuple[int, dict[int, float]]] | None:
        """In one transaction: add this replica's work per second (``unsent``), set its watermarks, and read back
        per instance of ``windows`` the lowest watermark of the replicas that wrote one within ``live_s`` and all
        replicas' work per second over the window. None while Redis is away (nothing was written then)."""
        if not marks and not windows:
            return {}  # no instance metered: nothing to say, nothing to read (and Redis not asked)
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        for iid, work in unsent.items():
            minutes = set()
            for second, value in work.items():
                pipe.hincrbyfloat(k.energy_work(iid, second // 60), str(second), value)
                minutes.add(second // 60)
            for minute in minutes:
                pipe.expire(k.energy_work(iid, minute), ttl_s)
        for iid, mark in marks.items():
            pipe.hset(k.energy_marks(iid), replica, f"{mark} {now:.3f}")
            pipe.expire(k.energy_marks(iid), ttl_s)
        order = list(windows)
        for iid in order:
            pipe.hgetall(k.energy_marks(iid))
            lo, hi = windows[iid]
            for minute in range(lo // 60, hi // 60 + 1):
                pipe.hgetall(k.energy_work(iid, minute))
        try:
            got = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("energy share", exc)
            return None
        self._ok()
        got = got[len(got) - sum(2 + hi // 60 - lo // 60 for lo, hi in windows.values()) :]
        out: dict[str, tuple[int, dict[int, float]]] = {}
        stale: list[tuple[str, bytes]] = []
        at = 0
        for iid in order:
            lo, hi = windows[iid]
            lowest: int | None = None
            for who, raw in got[at].items():
                try:
                    mark_s, ts_s = raw.decode().split()
                    mark, ts = int(mark_s), float(ts_s)
                except (ValueError, UnicodeDecodeError):
                    continue
                if ts < now - live_s:  # a replica gone: its work stays, its watermark no longer holds the books
                    if ts < now - ttl_s:
                        stale.append((iid, who))
                    continue
                lowest = mark if lowest is None else min(lowest, mark)
            totals: dict[int, float] = {}
            for n in range(1 + hi // 60 - lo // 60):
                for second, value in got[at + 1 + n].items():
                    with contextlib.suppress(ValueError):
                        totals[int(second)] = float(value)
            at += 2 + hi // 60 - lo // 60
            out[iid] = (lowest if lowest is not None else marks.get(iid, lo), totals)
        for iid, who in stale:
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await self.client.hdel(k.energy_marks(iid), who)
        return out

    async def claim_idle_seconds(
        self, replica: str, ttl_s: int, seconds: Mapping[str, Iterable[int]]
    ) -> dict[str, dict[int, bool]] | None:
        """Claim each idle second for this replica unless another has (HSETNX): second -> whether it is ours.
        None while Redis is away."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        asked: list[tuple[str, int, int]] = []  # instance, second, index of its HGET in the pipeline
        n = 0
        for iid, ks in seconds.items():
            minutes = set()
            for second in ks:
                pipe.hsetnx(k.energy_idle(iid, second // 60), str(second), replica)
                pipe.hget(k.energy_idle(iid, second // 60), str(second))
                asked.append((iid, second, n + 1))
                n += 2
                minutes.add(second // 60)
            for minute in minutes:
                pipe.expire(k.energy_idle(iid, minute), ttl_s)
                n += 1
        if not asked:
            return {}
        try:
            got = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("energy idle claim", exc)
            return None
        out: dict[str, dict[int, bool]] = {}
        for iid, second, at in asked:
            owner = got[at]
            out.setdefault(iid, {})[second] = isinstance(owner, bytes) and owner.decode() == replica
        return out

    # -- the planner's plan ---------------------------------------------------------------------
    async def load_plan(self) -> Plan | None:
        """The current plan, or None when there is none or it cannot be read as one."""
        raw = await self.client.get(self.keys.plan)
        if raw is None:
            return None
        try:
            return Plan.from_json(raw)
        except ContractError as exc:
            log.warning("ignoring the plan in redis: %s", exc)
            return None

    async def watch_plan(self, apply: Callable[[Plan | None], None], refresh_s: float) -> None:
        """Apply the current plan now, on every plan event, and every ``refresh_s`` (missed events).
        While Redis is away the last plan stays in force."""
        await self._watch(self.keys.plan_events, self.load_plan, apply, refresh_s, what="plan", stale=lambda _: None)

    async def _watch(
        self,
        channel: str,
        load: Callable[[], Awaitable[T]],
        apply: Callable[[T], None],
        refresh_s: float,
        *,
        what: str,
        stale: Callable[[int], None],
    ) -> None:
        """Subscribe to ``channel``; apply ``load()`` now, after every burst of events and every ``refresh_s``;
        on a Redis error mark it ``stale(1)`` and reconnect with backoff."""
        backoff = 0.2
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(channel)
                apply(await load())
                stale(0)
                self._ok()
                backoff = 0.2
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=refresh_s)
                    if msg is not None:
                        await _drain(pubsub)
                    apply(await load())
            except (TimeoutError, RedisError, OSError) as exc:
                stale(1)
                self._failed(what, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                await _close_quietly(pubsub.aclose)

    # -- dashboard reads ------------------------------------------------------------------------
    async def read_cluster(self) -> tuple[list[NodeTelemetry], Plan | None, list[InstanceRecord]]:
        """The agents' node telemetry, the current plan and the instance registry (empty when Redis is away)."""
        try:
            nodes = sorted(
                n.decode() if isinstance(n, bytes) else str(n) for n in await self.client.smembers(self.keys.nodes)
            )
            raw = await self.client.mget([self.keys.telemetry(n) for n in nodes]) if nodes else []
            plan_raw = await self.client.get(self.keys.plan)
            records = await self.load_instances()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("dashboard", exc)
            return [], None, []
        telemetry = []
        for item in raw:
            if item is not None:
                with contextlib.suppress(ContractError):
                    telemetry.append(NodeTelemetry.from_json(item))
        plan = None
        if plan_raw is not None:
            with contextlib.suppress(ContractError):
                plan = Plan.from_json(plan_raw)
        return telemetry, plan, records

    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()
        if self.connected:
            log.warning("redis unavailable (%s): %s; serving goes on, records are buffered", op, exc)
        self.connected = False

    def _ok(self) -> None:
        if not self.connected:
            log.info("redis connected")
        self.connected = True

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        await _close_quietly(self.client.aclose)


async def _drain(pubsub: aioredis.client.PubSub) -> None:
    """Swallow a burst of events: one reload covers them all."""
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:
        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.01) is None:
            return


async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError, RuntimeError):
        await close()


async def publish_instance(url: str, keys: Keys, record: InstanceRecord) -> None:
    """Register (or update) an instance and tell gateways; used by tests and by static-backend tools."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.hset(keys.instances, record.id, record.to_json())
        await client.publish(keys.instance_events, record.id)
    finally:
        await client.aclose()


async def read_energy_minutes(url: str, keys: Keys, first_minute: int, last_minute: int) -> list[dict[str, str]]:
    """The attributed-energy hashes of the minutes ``first_minute..last_minute`` (``wattgate report``), one
    pipeline; ``ConnectionError`` when Redis cannot be read."""
    client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        pipe = client.pipeline(transaction=False)
        for minute in range(first_minute, last_minute + 1):
            pipe.hgetall(keys.energy_minute(minute))
        return list(await pipe.execute())
    except (TimeoutError, RedisError, OSError) as exc:
        raise ConnectionError(f"cannot read the energy minutes from redis: {exc}") from exc
    finally:
        await client.aclose()


async def unreachable(url: str, timeout_s: float) -> str | None:
    """None when Redis at ``url`` answers PING within ``timeout_s``, else why not (one line)."""
    client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        await asyncio.wait_for(client.ping(), timeout=timeout_s + 1.0)
    except (TimeoutError, RedisError, OSError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        await _close_quietly(client.aclose)
    return None
