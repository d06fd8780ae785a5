"""The demo's one Redis write: load history for the planner, as gateways would have recorded it before the replay."""

from __future__ import annotations

import time

import numpy as np
import redis
from redis.exceptions import RedisError

from wattgate.demo.cluster import DemoError
from wattgate.planner.contract import LOAD_MINUTE_TTL_S, LOAD_SECOND_TTL_S, Keys, load_field


def prime_load_history(
    url: str, rps_by_pool: dict[str, float], minutes: int = 60, prefix: str = "wg", now_s: float | None = None
) -> None:
    """Write ``minutes`` of past load windows holding ``rps_by_pool`` (requests/s per pool), per second and
    per minute, as gateways that had been serving would have recorded them.

    Per second: Poisson counts at each pool's rate (seeded), so each minute's busiest 10 s, which the
    planner forecasts, carries the bursts real traffic would; per minute: their sums. An hour: the classic
    forecast's trend (EWMA) looks 40 minutes back, and a flat history that starts from zero inside that
    span reads as a steep rise (it forecast 1.76 times the rate)."""
    keys = Keys(prefix)
    now_minute = int((time.time() if now_s is None else now_s) // 60)
    rng = np.random.default_rng(0)
    pools = sorted(rps_by_pool)
    counts = rng.poisson([rps_by_pool[p] for p in pools], size=(minutes * 60, len(pools)))
    try:
        client = redis.Redis.from_url(url, socket_timeout=5.0)
        with client.pipeline(transaction=False) as pipe:
            first = (now_minute - minutes) * 60
            for i, row in enumerate(counts):
                key = keys.load_second(first + i)
                for pool, n in zip(pools, row, strict=True):
                    if n:
                        pipe.hincrby(key, load_field(pool, "requests"), int(n))
                pipe.expire(key, LOAD_SECOND_TTL_S)
            for m in range(minutes):
                key = keys.load_minute(now_minute - minutes + m)
                for k, pool in enumerate(pools):
                    pipe.hincrby(key, load_field(pool, "requests"), int(counts[m * 60 : (m + 1) * 60, k].sum()))
                pipe.expire(key, LOAD_MINUTE_TTL_S)
            pipe.execute()
        client.close()
    except (RedisError, OSError) as exc:
        raise DemoError(f"cannot write the load history to the demo's Redis: {exc}") from exc
