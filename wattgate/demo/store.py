"""The demo's one Redis write: load history for the planner, as gateways would have recorded it before the replay."""

from __future__ import annotations

import time

import redis
from redis.exceptions import RedisError

from wattgate.demo.cluster import DemoError
from wattgate.planner.contract import LOAD_MINUTE_TTL_S, Keys, load_field


def prime_load_history(url: str, rps_by_pool: dict[str, float], minutes: int = 60, prefix: str = "wg") -> None:
    """Write ``minutes`` past per-minute load windows holding ``rps_by_pool`` (requests/s per pool).

    An hour: the forecast's trend (EWMA) looks 40 minutes back, and a flat history that starts from zero
    inside that span reads as a steep rise (it forecast 1.76 times the rate)."""
    keys = Keys(prefix)
    now_minute = int(time.time() // 60)
    try:
        client = redis.Redis.from_url(url, socket_timeout=2.0)
        with client.pipeline(transaction=False) as pipe:
            for m in range(now_minute - minutes, now_minute):
                key = keys.load_minute(m)
                for pool, rps in rps_by_pool.items():
                    pipe.hincrby(key, load_field(pool, "requests"), round(rps * 60))
                pipe.expire(key, LOAD_MINUTE_TTL_S)
            pipe.execute()
        client.close()
    except (RedisError, OSError) as exc:
        raise DemoError(f"cannot write the load history to the demo's Redis: {exc}") from exc
