"""The planner's Redis adapter: leader lease, load windows, heartbeats, the current plan, atomic publish.

The only planner module importing ``redis``; every redis error leaves it as ``StoreError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import redis

from wattgate.planner.contract import ContractError, Heartbeat, Keys, Observation, Plan, load_field
from wattgate.planner.model import PlannerError

# Renew only if we still hold the lease; release only our own lease.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


RECENT_OBSERVATIONS = 5000  # the reactive path reads at most this many of the newest observations each time
STREAM_SLACK_S = 60.0


class StoreError(PlannerError):
    """Redis is unreachable or answered with an error."""


class PlannerStore:
    def __init__(self, url: str, keys: Keys | None = None, timeout_s: float = 2.0) -> None:
        self.keys = keys or Keys()
        try:
            self._r = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        except ValueError as exc:
            raise PlannerError(f"bad Redis URL {url!r}: {exc}") from exc

    def close(self) -> None:
        self._r.close()

    def ping(self) -> None:
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreError(str(exc)) from exc

    def hold_lease(self, me: str, lease_s: float) -> bool:
        """Take the leader lease if it is free, renew it if it is ours; False when another holds it."""
        ms = max(int(lease_s * 1000), 1)
        try:
            if self._r.set(self.keys.planner_leader, me, nx=True, px=ms):
                return True
            return bool(self._r.eval(_RENEW, 1, self.keys.planner_leader, me, ms))
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc

    def release_lease(self, me: str) -> None:
        try:
            self._r.eval(_RELEASE, 1, self.keys.planner_leader, me)
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc

    def load_minutes(self, pools: Sequence[str], end_minute: int, count: int) -> dict[str, list[float]]:
        """Requests per minute for each pool over ``count`` whole minutes ending before ``end_minute``."""
        minutes = range(end_minute - count, end_minute)
        try:
            pipe = self._r.pipeline(transaction=False)
            for m in minutes:
                pipe.hgetall(self.keys.load_minute(m))
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc
        out: dict[str, list[float]] = {p: [] for p in pools}
        for row in rows:
            for p in pools:
                out[p].append(_num(row.get(load_field(p, "requests"))))
        return out

    def load_seconds(self, pools: Sequence[str], start_second: int, end_second: int) -> dict[str, float]:
        """Requests per pool summed over the per-second windows ``start_second <= s < end_second``."""
        return {p: sum(c) for p, c in self.load_second_counts(pools, start_second, end_second).items()}

    def load_second_counts(self, pools: Sequence[str], start_second: int, end_second: int) -> dict[str, list[float]]:
        """Requests per pool in each per-second window ``start_second <= s < end_second`` (0 where none)."""
        try:
            pipe = self._r.pipeline(transaction=False)
            for sec in range(start_second, end_second):
                pipe.hgetall(self.keys.load_second(sec))
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc
        return {p: [_num(row.get(load_field(p, "requests"))) for row in rows] for p in pools}

    def recent_ttfts(self, since: float, limit: int = RECENT_OBSERVATIONS) -> list[tuple[str, float, float]]:
        """(pool, TTFT s, finished at) of the requests the gateways recorded as finished at ``since`` or later,
        from at most the newest ``limit`` observations; requests without a first token and malformed entries are
        skipped. Only entries the stream got since a minute before ``since`` are read (the stream's ids are
        Redis's clock at the gateway's flush: the minute covers flush delays and clocks apart)."""
        first_ms = int((since - STREAM_SLACK_S) * 1000)
        try:
            entries = self._r.xrevrange(
                self.keys.observations, max="+", min=f"{first_ms}-0" if first_ms > 0 else "-", count=limit
            )
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc
        out = []
        for _, values in entries or []:
            try:
                obs = Observation.from_json((values or {}).get("json", ""))
            except ContractError:
                continue
            ttft, ts = obs.ttft_s, obs.ts
            if _real(ttft) and _real(ts) and ts >= since:
                out.append((str(obs.pool), float(ttft), float(ts)))  # type: ignore[arg-type]
        return out

    def heartbeats(self) -> list[Heartbeat]:
        """The live heartbeats (expired ones are gone with their TTL); malformed ones are skipped."""
        try:
            nodes = sorted(str(n) for n in self._r.smembers(self.keys.nodes))
            raws = self._r.mget([self.keys.heartbeat(n) for n in nodes]) if nodes else []
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc
        out = []
        for raw in raws:
            if raw is None:
                continue
            try:
                out.append(Heartbeat.from_json(raw))
            except ContractError:
                continue
        return out

    def current_plan(self) -> Plan | None:
        try:
            raw = self._r.get(self.keys.plan)
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc
        if raw is None:
            return None
        try:
            return Plan.from_json(raw)
        except ContractError:
            return None

    def publish(self, build: Callable[[int], Plan]) -> Plan:
        """INCR the plan sequence, SET the plan and PUBLISH its version in one MULTI (retried on a race)."""
        k = self.keys
        try:
            with self._r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(k.plan_seq)  # type: ignore[no-untyped-call]
                        version = int(pipe.get(k.plan_seq) or 0) + 1
                        plan = build(version)
                        pipe.multi()
                        pipe.incr(k.plan_seq)
                        pipe.set(k.plan, plan.to_json())
                        pipe.publish(k.plan_events, str(version))
                        pipe.execute()
                        return plan
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: str | None) -> float:
    """A counter from a load window; anything but a finite number >= 0 counts as 0."""
    try:
        x = float(v) if v is not None else 0.0
    except ValueError:
        return 0.0
    return x if math.isfinite(x) and x >= 0 else 0.0
