"""The gateway's Redis side when Redis goes away or turns slow: the last plan stays in force, serving goes on,
the trouble shows in the metrics, and everything resumes when Redis answers again."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from tests.gateway.conftest import Servers
from tests.gateway.test_plan_routing import plan_serving, register, served_by
from tests.gateway.test_redis import metric
from tests.support import wait_for
from wattgate.embedded_redis import EmbeddedRedis
from wattgate.planner.store import PlannerStore

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}  # SM


def test_the_last_plan_stays_in_force_while_redis_is_away(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedRedis().start()
    try:
        _, backend = servers.backend()
        register(server.url, backend, "sm-1", "SM")
        register(server.url, backend, "sl-1", "SL")
        gw, state = servers.gateway(
            [], redis_url=server.url, registry_refresh_s=0.1, redis_timeout_s=0.3, flush_interval_s=0.05
        )
        wait_for(lambda: len(state.instances) == 2)
        planner = PlannerStore(server.url)
        plan = planner.publish(plan_serving({"SL": ["SL", "SM"]}))  # SM's requests go to pool SL
        planner.close()
        wait_for(lambda: state.plan_version == plan.version)
        assert served_by(gw) == "sl-1"
        server.stop()
        # the plan watcher itself has failed to read Redis since (not just the flusher)
        wait_for(lambda: metric(gw, 'wattgate_gateway_redis_errors_total{op="plan"}') >= 2, "plan reads failing")
        assert state.plan_version == plan.version and state.routes
        assert metric(gw, "wattgate_gateway_plan_version") == float(plan.version)
        for _ in range(3):
            assert served_by(gw) == "sl-1"  # still routed by the plan, not by the spill chain
        # said once per outage, however many reads fail (the plan's, the registry's, the flusher's)
        said = [m for m in caplog.records if m.name == "wattgate.gateway.store" and "unavailable" in m.msg]
        assert len(said) == 1 and said[0].levelname == "WARNING"
        server = EmbeddedRedis(port=server.port).start()  # back, and empty: no plan any more
        wait_for(lambda: state.plan_version is None, "the gateway reads Redis again and finds no plan")
        register(server.url, backend, "sm-1", "SM")  # the agents re-register their instances
        register(server.url, backend, "sl-1", "SL")
        wait_for(lambda: len(state.instances) == 2)
        assert served_by(gw) == "sm-1"
    finally:
        server.stop()


def test_a_slow_redis_is_noticed_and_never_slows_a_request(servers: Servers, redis_url: str) -> None:
    """``CLIENT PAUSE`` holds every Redis command for 5 s: a slow Redis, not a dead one. The gateway's
    commands time out after ``redis_timeout_s`` (the registry goes stale, the errors are counted), requests are
    answered meanwhile without waiting for Redis, and the records buffered during the pause arrive afterwards."""
    _, backend = servers.backend()
    register(redis_url, backend, "sm-1", "SM")
    gw, state = servers.gateway(
        [], redis_url=redis_url, registry_refresh_s=0.1, redis_timeout_s=0.3, flush_interval_s=0.05
    )
    wait_for(lambda: len(state.instances) == 1)
    admin = redis.Redis.from_url(redis_url)
    pause_s = 5.0
    admin.client_pause(int(pause_s * 1000))  # milliseconds; this connection's own command returns at once
    paused_at = time.monotonic()
    try:
        for _ in range(3):
            assert httpx.post(gw + "/v1/chat/completions", json=BODY, timeout=30).status_code == 200
        # all answered while every Redis command still hung: none of them waited for Redis
        assert time.monotonic() - paused_at < pause_s, "the requests were not all answered during the pause"
        # seen within the pause (a read times out after 0.3 s), not when Redis answers again
        wait_for(lambda: metric(gw, "wattgate_gateway_registry_stale") == 1.0, "stale registry", timeout_s=4)
        assert metric(gw, 'wattgate_gateway_redis_errors_total{op="registry"}') >= 1
        assert state.instances["sm-1"].spec.ready  # the last instance list is kept
    finally:
        threading.Timer(0, admin.close).start()
    wait_for(lambda: metric(gw, "wattgate_gateway_registry_stale") == 0.0, "registry fresh again", timeout_s=15)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.xlen("wg:v1:observations") == 3, "the buffered observations arrive")
    client.close()
