"""Servers wattgate does not manage: the gateway sends each the request types of the pool the plan gives it
(``Plan.fixed``), whatever its registry record says, through real parts (the planner's store publishing in
a real Redis, the gateway under uvicorn, fake backends)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.gateway.conftest import Servers
from tests.gateway.test_plan_routing import register, served_by
from tests.support import wait_for
from wattgate.planner.contract import Plan, PlannedInstance
from wattgate.planner.store import PlannerStore


def fixed_plan(pools: dict[str, str], fixed: bool = True) -> Callable[[int], Plan]:
    inst = [PlannedInstance(iid, pool, "ext", [n], 1, 1200, 1.0, 400.0) for n, (iid, pool) in enumerate(pools.items())]
    serves = {pool: [pool] for pool in pools.values()}
    ids = list(pools) if fixed else []
    return lambda version: Plan(version, time.time(), "fake-model", inst, {}, 0.0, 0.0, serves=serves, fixed=ids)


def test_gateway_routes_fixed_instances_by_the_plans_pools(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend()
    register(redis_url, backend, "e0", "SS")  # the pools the agent registered them with, before any plan
    register(redis_url, backend, "e1", "SM")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)
    wait_for(lambda: len(state.instances) == 2)
    assert served_by(gw) == "e1"  # an SM request: the registry's SM instance
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(fixed_plan({"e0": "SM", "e1": "LL"}))
        wait_for(lambda: state.plan_version == plan.version)
        assert served_by(gw) == "e0"  # the plan moved e0 to SM at once, before its record says so
        assert state.instances["e1"].spec.pool == "LL"
        register(redis_url, backend, "e0", "SS", conc=100)  # a registry update with the old pool: the plan stands
        wait_for(lambda: state.instances["e0"].spec.max_concurrency == 100)
        assert state.instances["e0"].spec.pool == "SM" and served_by(gw) == "e0"
        # a plan that does not list them as fixed: their registry pools again
        plan = planner.publish(fixed_plan({"e0": "SM", "e1": "LL"}, fixed=False))
        wait_for(lambda: state.plan_version == plan.version)
        assert state.instances["e0"].spec.pool == "SS" and served_by(gw) == "e1"
    finally:
        planner.close()
