"""Work-conserving spill (``choose``'s ``spill_any``): when every instance of a request's route is full
(admission by the plan), the least full instance with room of any pool takes it instead of a queue behind the
route; a route with room routes as before, and an instance asleep, draining, starting or ejected is never
picked. The rule alone, and a burst through a real gateway (uvicorn on loopback, a real Redis, the planner's
own store publishing the plan)."""

from __future__ import annotations

import time

import pytest

from tests.gateway.conftest import Servers
from tests.gateway.test_admission import _inst, held_streams
from tests.gateway.test_plan_routing import register
from tests.support import wait_for
from wattgate.gateway.routing import DEFAULT_SPILL_ANY, InstanceSpec, choose, plan_routes
from wattgate.gateway.settings import GatewaySettings
from wattgate.planner.contract import Plan, PlannedInstance
from wattgate.planner.store import PlannerStore
from wattgate.profiles.classes import RequestType
from wattgate.settings.common import SPILL_ANY

LS = RequestType.parse("LS")
LS_ROUTE = plan_routes({"LS": ["LS"]})  # LS's route: pool LS, then its spill chain (long inputs only)


def test_one_default_for_the_option_the_settings_and_the_replay() -> None:
    assert SPILL_ANY.default == DEFAULT_SPILL_ANY == GatewaySettings().spill_any


def test_a_full_route_spills_to_the_least_full_instance_of_any_pool() -> None:
    ls = _inst("ls", "LS", limit=2, in_flight=2)
    ll = _inst("ll", "LL", limit=1, in_flight=1)  # LS's spill chain: full too
    ss = _inst("ss", "SS", limit=4, in_flight=3)  # outside the route, 3/4 full
    mm = _inst("mm", "MM", limit=8, in_flight=4, tokens=90_000)  # 1/2 full: the least full, however loaded
    usable = [ls, ll, ss, mm]
    assert choose(usable, "m", LS, 0.0, routes=LS_ROUTE, spill_any=True) == (mm, "MM")
    # off: it queues on the least loaded of the route's first pool, as before
    assert choose(usable, "m", LS, 0.0, routes=LS_ROUTE) == (ls, "LS")
    # every instance of every pool full: it queues on the route as before
    mm.in_flight = ss.in_flight = 8
    assert choose(usable, "m", LS, 0.0, routes=LS_ROUTE, spill_any=True) == (ls, "LS")


def test_a_route_with_room_routes_as_before() -> None:
    ls = _inst("ls", "LS", limit=2, in_flight=1, tokens=50_000)
    idle = _inst("ss", "SS", limit=8)
    assert choose([ls, idle], "m", LS, 0.0, routes=LS_ROUTE, spill_any=True) == (ls, "LS")
    ll = _inst("ll", "LL", limit=2, in_flight=0)  # the route's second pool has room: the route spill wins
    ls.in_flight = 2
    assert choose([ls, ll, idle], "m", LS, 0.0, routes=LS_ROUTE, spill_any=True) == (ll, "LL")


@pytest.mark.parametrize("why", ["asleep", "draining", "ejected", "unhealthy"])
def test_it_never_spills_to_an_instance_that_cannot_serve(why: str) -> None:
    ls = _inst("ls", "LS", limit=1, in_flight=5)
    other = _inst("ss", "SS", limit=8)
    if why in {"asleep", "draining"}:  # the registry's non-ready states: spec.ready False
        s = other.spec
        other.spec = InstanceSpec(s.id, s.base_url, s.models, s.pool, s.max_concurrency, s.api_key, s.source, False)
    elif why == "ejected":
        other.ejected_until = 10.0
    else:
        other.healthy = False
    assert choose([ls, other], "m", LS, 1.0, routes=LS_ROUTE, spill_any=True) == (ls, "LS")


def _plan(version: int) -> Plan:
    planned = [
        PlannedInstance("sm-1", "SM", "n1", [0], 1, 1980, 1.0, 300.0),
        PlannedInstance("ss-1", "SS", "n1", [1], 1, 1980, 0.5, 300.0),
        PlannedInstance("ss-2", "SS", "n1", [2], 1, 1980, 0.0, 300.0, standby=True),
    ]
    return Plan(version, time.time(), "fake-model", planned, {}, 0.0, 0.0, serves={"SM": ["SM"], "SS": ["SS"]})


@pytest.mark.parametrize(
    ("spill_any", "expected"),
    [
        (True, ["sm-1", "sm-1", "ss-1", "sm-1"]),  # sm-1 full at 2: one to ss-1 (room for 1); all full: the route
        (False, ["sm-1", "sm-1", "sm-1", "sm-1"]),  # SM's route (SM, SL) holds no other instance: it queues
    ],
)
def test_a_burst_through_the_gateway_spills_to_another_pool(
    servers: Servers, redis_url: str, spill_any: bool, expected: list[str]
) -> None:
    """SM requests, planned for pool SM (sm-1, 1 req/s: a limit of 2 at a 2 s window). SS is not on SM's
    route; ss-1 (0.5 req/s: a limit of 1) is awake, ss-2 asleep and never picked."""
    _, backend = servers.backend(stall_after_first=30)  # every stream holds its instance until closed
    register(redis_url, backend, "sm-1", "SM")
    register(redis_url, backend, "ss-1", "SS")
    register(redis_url, backend, "ss-2", "SS", state="asleep")
    gw, state = servers.gateway(
        [], redis_url=redis_url, registry_refresh_s=30, admission_window_s=2.0, spill_any=spill_any
    )
    wait_for(lambda: len(state.instances) == 3)
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(_plan)
        wait_for(lambda: state.plan_version == plan.version)
        assert [i for i, _ in held_streams(gw, 4)] == expected
        wait_for(lambda: all(i.in_flight == 0 for i in state.instances.values()), "the streams to end")
    finally:
        planner.close()
