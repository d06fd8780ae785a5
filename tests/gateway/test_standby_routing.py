"""Warm standby at the gateway, through real parts (the planner's store publishing in a real Redis, the gateway
under uvicorn, a fake backend): an asleep instance is never routed to, and a plan's standby instances (no load)
leave their pool's routing weights as the serving instances alone set them."""

from __future__ import annotations

import time

import httpx

from tests.gateway.conftest import Servers
from tests.gateway.test_plan_routing import register, served_by
from tests.support import wait_for
from wattgate.planner.contract import Plan, PlannedInstance
from wattgate.planner.store import PlannerStore


def test_asleep_instances_take_nothing_and_standby_weighs_nothing(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend()
    register(redis_url, backend, "big", "SM")
    register(redis_url, backend, "small", "SM")
    register(redis_url, backend, "sleeper", "SM", state="asleep")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)
    wait_for(lambda: {"big", "small"} <= set(state.instances))
    planned = [
        PlannedInstance("big", "SM", "n1", [0, 1, 2, 3], 4, 1980, 3.0, 1000.0),
        PlannedInstance("small", "SM", "n1", [4, 5], 2, 1980, 1.0, 500.0),
        PlannedInstance("sleeper", "SM", "n1", [6, 7], 2, 1980, 0.0, 140.0, standby=True),
    ]
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(lambda v: Plan(v, time.time(), "fake-model", planned, {}, 0.0, 0.0))
        wait_for(lambda: state.plan_version == plan.version)
        # 3 and 1 req/s over their mean of 2: with the sleeper's 0 counted the mean would be 4/3
        assert state.instances["big"].weight == 1.5 and state.instances["small"].weight == 0.5
        assert "sleeper" not in state.instances or not state.instances["sleeper"].spec.ready
        assert {served_by(gw) for _ in range(12)} <= {"big", "small"}
        state.instances["big"].in_flight = state.instances["big"].spec.max_concurrency  # both full: still not
        state.instances["small"].in_flight = state.instances["small"].spec.max_concurrency  # the sleeper
        resp = httpx.post(
            gw + "/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200},
        )
        assert resp.status_code == 503 and "no_capacity" in resp.text
    finally:
        planner.close()
