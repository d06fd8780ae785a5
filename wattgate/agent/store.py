"""The agent's Redis seam (the only agent module importing redis): plan in; instance records,
telemetry and heartbeat out; the gateways' per-second load windows read for the clock loop.

Every Redis failure becomes ``StoreError``; callers keep running on what they last saw.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import redis

from wattgate.agent.errors import AgentError
from wattgate.planner.contract import (
    HEARTBEAT_TTL_S,
    TELEMETRY_TTL_S,
    ContractError,
    Heartbeat,
    InstanceEnergy,
    InstanceRecord,
    InstanceState,
    Keys,
    NodeTelemetry,
    Plan,
    load_field,
)

log = logging.getLogger(__name__)


class StoreError(AgentError):
    """Redis is unreachable or answered with an error."""


class BadPlanError(AgentError):
    """The published plan does not follow the wire schema (another version, missing fields)."""


class AgentStore:
    def __init__(self, url: str, keys: Keys, timeout_s: float = 2.0) -> None:
        self.keys = keys
        self._r = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=10
        )

    def close(self) -> None:
        self._r.close()

    def ping(self) -> None:
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def plan(self) -> Plan | None:
        """The current plan, None if none was published. A plan of another schema is refused."""
        try:
            raw = self._r.get(self.keys.plan)
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        if raw is None:
            return None
        try:
            return Plan.from_json(raw)
        except ContractError as exc:
            raise BadPlanError(f"cannot use the published plan: {exc}") from exc

    def put_instance(self, record: InstanceRecord, announce: bool = True) -> None:
        """Write the record; ``announce`` publishes its id on the instance events channel."""
        try:
            with self._r.pipeline() as p:
                p.hset(self.keys.instances, record.id, record.to_json())
                if announce:
                    p.publish(self.keys.instance_events, record.id)
                p.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def remove_instance(self, instance_id: str) -> None:
        try:
            with self._r.pipeline() as p:
                p.hdel(self.keys.instances, instance_id)
                p.hdel(self.keys.energy, instance_id)
                p.publish(self.keys.instance_events, instance_id)
                p.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def instances(self) -> list[InstanceRecord]:
        try:
            raw = self._r.hgetall(self.keys.instances)
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return InstanceRecord.registry(raw, lambda key, exc: log.warning("ignoring instance record %r: %s", key, exc))

    def ready_count(self, pool: str) -> int:
        return sum(1 for r in self.instances() if r.pool == pool and r.state == InstanceState.READY)

    def pool_load_rps(self, pool: str, now: float, window_s: int) -> float:
        """Mean requests/s of ``pool`` over the last ``window_s`` whole seconds (gateway load windows)."""
        last = math.floor(now) - 1  # the current second is still filling
        field = load_field(pool, "requests")
        try:
            with self._r.pipeline(transaction=False) as p:
                for s in range(last - window_s + 1, last + 1):
                    p.hget(self.keys.load_second(s), field)
                values = p.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return sum(float(v) for v in values if v is not None) / window_s

    def publish_node(
        self, telemetry: NodeTelemetry, heartbeat: Heartbeat, energy: Sequence[InstanceEnergy] = ()
    ) -> None:
        """Telemetry, heartbeat and the instances' energy counters, in one round trip."""
        try:
            with self._r.pipeline() as p:
                if energy:
                    p.hset(self.keys.energy, mapping={e.instance: e.to_json() for e in energy})
                p.set(self.keys.telemetry(telemetry.node), telemetry.to_json(), ex=TELEMETRY_TTL_S)
                p.set(self.keys.heartbeat(heartbeat.node), heartbeat.to_json(), ex=HEARTBEAT_TTL_S)
                p.sadd(self.keys.nodes, heartbeat.node)
                p.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
