"""Admission by the plan (``routing.plan_limits``): an instance holding its planned load's worth of requests is
full, and a request spills to the next pool of its route with room; only when every pool is full does it
queue where it would have without admission. The rule alone, the gateway's state, and a burst through a real
gateway (uvicorn on loopback, a real Redis, the planner's own store publishing the plan)."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack

import httpx

from tests.gateway.conftest import Servers
from tests.gateway.test_plan_routing import SM_BODY, register
from tests.support import wait_for
from wattgate.gateway.routing import (
    DEFAULT_ADMISSION_WINDOW_S,
    MIN_LIMIT,
    Instance,
    InstanceSpec,
    admission_limit,
    choose,
    plan_limits,
    plan_routes,
)
from wattgate.gateway.settings import GatewaySettings
from wattgate.planner.contract import Plan, PlannedInstance
from wattgate.planner.store import PlannerStore
from wattgate.profiles.classes import RequestType
from wattgate.settings.common import ADMISSION_WINDOW_S

SM = RequestType.parse("SM")
SM_TO_SL = plan_routes({"SL": ["SL", "SM"]})  # the plan sends SM to pool SL, then SM's spill chain (SM, ...)


def _inst(id_: str, pool: str | None, limit: float = math.inf, in_flight: int = 0, tokens: int = 0) -> Instance:
    inst = Instance(InstanceSpec(id_, "http://x", frozenset({"m"}), pool, 64, None, "registry"))
    inst.limit, inst.in_flight, inst.outstanding_tokens = limit, in_flight, tokens
    return inst


def test_limits_are_the_planned_arrivals_over_the_window() -> None:
    assert plan_limits([("a", 3.0), ("b", 0.2), ("c", 0.0)], 2.0) == {"a": 6.0, "b": MIN_LIMIT, "c": MIN_LIMIT}
    assert plan_limits([("a", 3.0)], 0.0) == {}  # the off-switch: no limits at all
    assert admission_limit(3.0, 0.0) == math.inf
    assert admission_limit(-1.0, 4.0) == MIN_LIMIT
    # one default for the gateway's option, its settings and the replay
    assert ADMISSION_WINDOW_S.default == DEFAULT_ADMISSION_WINDOW_S == GatewaySettings().admission_window_s


def test_a_full_planned_pool_spills_to_the_next_pool_of_the_route() -> None:
    sl = _inst("sl", "SL", limit=2, in_flight=2)  # at its limit, far below its concurrency bound (64)
    sm = _inst("sm", "SM", limit=2, in_flight=1, tokens=10_000)
    assert choose([sl, sm], "m", SM, 0.0, routes=SM_TO_SL) == (sm, "SM")
    sl.in_flight = 1  # room again: the plan's pool first, however loaded the other
    assert choose([sl, sm], "m", SM, 0.0, routes=SM_TO_SL) == (sl, "SL")


def test_within_a_pool_an_instance_with_room_wins_over_a_full_less_loaded_one() -> None:
    full = _inst("full", "SL", limit=1, in_flight=1, tokens=10)
    roomy = _inst("roomy", "SL", limit=8, in_flight=3, tokens=5_000)
    assert choose([full, roomy], "m", SM, 0.0, routes=SM_TO_SL) == (roomy, "SL")


def test_when_every_pool_is_full_it_queues_on_the_least_loaded_of_the_first_pool() -> None:
    sl_a = _inst("sl-a", "SL", limit=1, in_flight=3, tokens=900)
    sl_b = _inst("sl-b", "SL", limit=1, in_flight=2, tokens=300)
    sm = _inst("sm", "SM", limit=1, in_flight=1, tokens=0)  # full too, though it holds the least work
    assert choose([sl_a, sl_b, sm], "m", SM, 0.0, routes=SM_TO_SL) == (sl_b, "SL")
    generic = _inst("any", None)  # an instance without a pool has no planned load, so no limit: it has room
    assert choose([sl_a, sl_b, sm, generic], "m", SM, 0.0, routes=SM_TO_SL) == (generic, "SM")


def test_admission_off_routes_as_before() -> None:
    """No limits (``admission_window_s`` 0, or no plan): the plan's pool takes everything below the
    concurrency bound, as the gateway did before admission."""
    sl = _inst("sl", "SL", in_flight=50)
    sm = _inst("sm", "SM")
    assert choose([sl, sm], "m", SM, 0.0, routes=SM_TO_SL) == (sl, "SL")


def held_streams(gw: str, n: int) -> list[tuple[str, str]]:
    """Send ``n`` streamed SM requests through the gateway one after the other, each held open after its first
    token (in flight on its instance) until all ``n`` have started; the (instance, pool) each went to."""
    served = []
    with ExitStack() as held:
        for _ in range(n):
            resp = held.enter_context(
                httpx.stream("POST", gw + "/v1/chat/completions", json={**SM_BODY, "stream": True})
            )
            chunks = resp.iter_raw()
            held.callback(chunks.close)
            next(chunks)  # the first token came: the request is in flight on its instance
            served.append((resp.headers["x-wattgate-instance"], resp.headers["x-wattgate-pool"]))
    return served


def _plan(version: int, loads: dict[str, tuple[str, float]], standby: frozenset[str] = frozenset()) -> Plan:
    planned = [
        PlannedInstance(iid, pool, "n1", [n], 1, 1980, rps, 300.0, standby=iid in standby)
        for n, (iid, (pool, rps)) in enumerate(sorted(loads.items()))
    ]
    return Plan(version, time.time(), "fake-model", planned, {}, 0.0, 0.0, serves={"SL": ["SL", "SM"], "SM": []})


def test_the_gateway_takes_its_limits_from_the_plan(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend()
    register(redis_url, backend, "sl-1", "SL")
    _, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30, admission_window_s=4.0)
    wait_for(lambda: "sl-1" in state.instances)
    assert state.instances["sl-1"].limit == math.inf  # no plan: no limit
    planner = PlannerStore(redis_url)
    try:
        loads = {"sl-1": ("SL", 1.5), "sm-1": ("SM", 0.1), "sm-2": ("SM", 2.0)}
        plan = planner.publish(lambda v: _plan(v, loads, standby=frozenset({"sm-2"})))
        wait_for(lambda: state.plan_version == plan.version)
        assert state.instances["sl-1"].limit == 6.0  # 1.5 req/s x 4 s
        register(redis_url, backend, "sm-1", "SM")  # registered after the plan: limited on arrival
        wait_for(lambda: "sm-1" in state.instances)
        assert state.instances["sm-1"].limit == MIN_LIMIT
        assert "sm-2" not in state.limits  # asleep: planned for no load, never routed
    finally:
        planner.close()


def test_a_burst_spills_to_the_second_pool_of_the_plan(servers: Servers, redis_url: str) -> None:
    """The plan sends SM to pool SL and plans small loads (sl-1 1 req/s, sm-1 0.5 req/s: limits of 2 and 1
    requests at a 2 s window). A burst of held streams fills sl-1, spills one to sm-1, and, with
    both full, queues on sl-1 again; nothing is refused, and each instance is far below its concurrency bound."""
    _, backend = servers.backend(stall_after_first=30)  # every stream holds its instance until closed
    register(redis_url, backend, "sl-1", "SL")
    register(redis_url, backend, "sm-1", "SM")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30, admission_window_s=2.0)
    wait_for(lambda: len(state.instances) == 2)
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(lambda v: _plan(v, {"sl-1": ("SL", 1.0), "sm-1": ("SM", 0.5)}))
        wait_for(lambda: state.plan_version == plan.version)
        assert held_streams(gw, 4) == [("sl-1", "SL"), ("sl-1", "SL"), ("sm-1", "SM"), ("sl-1", "SL")]
        wait_for(lambda: all(i.in_flight == 0 for i in state.instances.values()), "the streams to end")
    finally:
        planner.close()


def test_a_burst_stays_in_the_planned_pool_with_admission_off(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend(stall_after_first=30)
    register(redis_url, backend, "sl-1", "SL")
    register(redis_url, backend, "sm-1", "SM")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)  # admission off: the default
    wait_for(lambda: len(state.instances) == 2)
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(lambda v: _plan(v, {"sl-1": ("SL", 1.0), "sm-1": ("SM", 0.5)}))
        wait_for(lambda: state.plan_version == plan.version)
        assert [i for i, _ in held_streams(gw, 3)] == ["sl-1"] * 3
        wait_for(lambda: all(i.in_flight == 0 for i in state.instances.values()), "the streams to end")
    finally:
        planner.close()
