"""Routing by the planner's plan (``Plan.serves``) through real parts: the planner's own store publishes
plans in a real Redis, the gateway runs under uvicorn, fake backends answer; and the pure route table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import redis

from tests.gateway.conftest import Servers
from tests.support import wait_for
from wattgate.classifier.api import Prediction
from wattgate.gateway.routing import (
    MIN_WEIGHT,
    Instance,
    InstanceSpec,
    choose,
    expected_output_tokens,
    plan_routes,
    plan_weights,
)
from wattgate.gateway.store import publish_instance
from wattgate.planner.contract import InstanceRecord, Keys, Plan, PlannedInstance, load_field
from wattgate.planner.store import PlannerStore
from wattgate.profiles.classes import ClassEdges, RequestType

MSG = [{"role": "user", "content": "hi"}]
SM_BODY = {"model": "fake-model", "messages": MSG, "max_tokens": 200}  # max_tokens 200: an SM request


def plan_serving(serves: dict[str, list[str]]) -> Callable[[int], Plan]:
    def build(version: int) -> Plan:
        return Plan(version, time.time(), "fake-model", [], {}, 0.0, 0.0, serves=serves)

    return build


def register(url: str, backend: str, id_: str, pool: str, state: str = "ready", conc: int = 256) -> None:
    rec = InstanceRecord(
        id=id_, base_url=backend, model="fake-model", pool=pool, node="n1", state=state, max_concurrency=conc
    )
    asyncio.run(publish_instance(url, Keys(), rec))


def served_by(gw: str) -> str:
    resp = httpx.post(gw + "/v1/chat/completions", json=SM_BODY)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-wattgate-instance"]


def test_route_table_puts_the_plans_pool_first_then_the_spill_chain() -> None:
    routes = plan_routes({"SL": ["SL", "SM"], "MM": ["MM"], "XX": ["SS"], "LL": ["nonsense"]})
    assert routes["SM"] == ("SL", "SM", "MM", "ML", "LM", "LL")  # then SM's spill chain, never a shorter output
    assert routes["SL"][0] == "SL" and routes["MM"][0] == "MM"
    assert "SS" not in routes and "LL" not in routes  # unknown names are ignored: the spill chain stands
    assert plan_routes({}) == {}


def _inst(id_: str, pool: str, conc: int = 4) -> Instance:
    return Instance(InstanceSpec(id_, "http://x", frozenset({"m"}), pool, conc, None, "registry"))


def test_choose_follows_the_plan_and_falls_back_when_the_planned_pool_is_full_or_empty() -> None:
    sm, sl = _inst("sm", "SM"), _inst("sl", "SL", conc=1)
    rtype = RequestType.parse("SM")
    routes = plan_routes({"SL": ["SL", "SM"]})
    assert choose([sm, sl], "m", rtype, 0.0) == (sm, "SM")  # no plan: the type's own pool
    assert choose([sm, sl], "m", rtype, 0.0, routes=routes) == (sl, "SL")  # the plan's pool
    sl.in_flight = 1  # at its concurrency bound: saturated
    assert choose([sm, sl], "m", rtype, 0.0, routes=routes) == (sm, "SM")
    assert choose([sm], "m", rtype, 0.0, routes=routes) == (sm, "SM")  # the planned pool has no instance
    sm.in_flight = 4
    assert choose([sm, sl], "m", rtype, 0.0, routes=routes) is None  # nothing at all can take it


def test_gateway_routes_by_the_published_plan_and_falls_back(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend()
    register(redis_url, backend, "sm-1", "SM")
    register(redis_url, backend, "sl-1", "SL")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30, flush_interval_s=0.05)
    wait_for(lambda: len(state.instances) == 2)
    assert served_by(gw) == "sm-1"  # no plan yet: the spill chain, its own pool first
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(plan_serving({"SL": ["SL", "SM"]}))  # the plan sends SM's load to pool SL
        wait_for(lambda: state.plan_version == plan.version)
        resp = httpx.post(gw + "/v1/chat/completions", json=SM_BODY)
        assert resp.headers["x-wattgate-instance"] == "sl-1"
        assert resp.headers["x-wattgate-pool"] == "SL"
        assert f"wattgate_gateway_plan_version {float(plan.version)}" in httpx.get(gw + "/metrics").text
        # the load is recorded under the request's type, not the pool that served it: the planner's
        # forecast keeps seeing SM's own demand after it sent SM to SL
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        wait_for(lambda: any(client.hget(k, load_field("SM", "requests")) for k in client.keys("wg:v1:load:m:*")))
        assert not any(client.hget(k, load_field("SL", "requests")) for k in client.keys("wg:v1:load:m:*"))
        client.close()
        # the planned pool's only instance drains: the request still goes somewhere (spill chain)
        register(redis_url, backend, "sl-1", "SL", state="draining")
        wait_for(lambda: not state.instances["sl-1"].spec.ready)
        assert served_by(gw) == "sm-1"
        register(redis_url, backend, "sl-1", "SL")
        wait_for(lambda: state.instances["sl-1"].spec.ready)
        assert served_by(gw) == "sl-1"
        # a newer plan sends SM home again
        plan = planner.publish(plan_serving({"SM": ["SM"], "SL": ["SL"]}))
        wait_for(lambda: state.plan_version == plan.version)
        assert served_by(gw) == "sm-1"
        # the plan is gone: the spill chain alone
        planner.publish(plan_serving({"SL": ["SL", "SM"]}))
        client = redis.Redis.from_url(redis_url)
        client.delete(Keys().plan)
        client.publish(Keys().plan_events, "0")
        client.close()
        wait_for(lambda: state.plan_version is None)
        assert served_by(gw) == "sm-1"
    finally:
        planner.close()


def test_saturated_planned_pool_spills_instead_of_refusing(servers: Servers, redis_url: str) -> None:
    _, slow = servers.backend(stall_after_first=30)
    _, fast = servers.backend()
    register(redis_url, slow, "sl-1", "SL", conc=1)
    register(redis_url, fast, "sm-1", "SM")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)
    wait_for(lambda: len(state.instances) == 2)
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(plan_serving({"SL": ["SL", "SM"]}))
        wait_for(lambda: state.plan_version == plan.version)
        with httpx.stream("POST", gw + "/v1/chat/completions", json={**SM_BODY, "stream": True}) as held:
            chunks = held.iter_raw()  # keep the iterator: dropping it closes the stream
            next(chunks)
            assert held.headers["x-wattgate-instance"] == "sl-1"
            assert served_by(gw) == "sm-1"  # sl-1 is at its bound: the next request is not refused
        wait_for(lambda: state.instances["sl-1"].in_flight == 0)
    finally:
        planner.close()


def test_weights_are_the_planned_load_over_the_pools_mean() -> None:
    w = plan_weights([("a", "ML", 2.0), ("b", "ML", 0.5), ("c", "ML", 0.0), ("d", "SS", 0.0), ("e", "SS", 0.0)])
    mean = 2.5 / 3
    assert w["a"] == 2.0 / mean and w["b"] == 0.5 / mean
    assert w["c"] == MIN_WEIGHT  # planned for nothing: still takes work when the others are busier
    assert w["d"] == w["e"] == 1.0  # a pool planned with no load: equal weights


def test_choose_divides_outstanding_work_by_the_weight() -> None:
    """TP4 ``big`` is planned for three times the load of TP2 ``small``: it has more tokens in flight,
    yet less per unit of planned capacity, so it takes the next request."""
    big, small = _inst("big", "ML", conc=64), _inst("small", "ML", conc=64)
    big.outstanding_tokens, small.outstanding_tokens = 300, 150
    rtype = RequestType.parse("ML")
    assert choose([big, small], "m", rtype, 0.0) == (small, "ML")  # unweighted: least tokens
    big.weight, small.weight = 1.5, 0.5
    assert choose([big, small], "m", rtype, 0.0) == (big, "ML")


def test_gateway_weighs_instances_by_the_plan(servers: Servers, redis_url: str) -> None:
    _, backend = servers.backend()
    register(redis_url, backend, "big", "SM")
    gw, state = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)
    wait_for(lambda: "big" in state.instances)
    planned = [
        PlannedInstance("big", "SM", "n1", [0, 1, 2, 3], 4, 1980, 3.0, 1000.0),
        PlannedInstance("small", "SM", "n1", [4, 5], 2, 1980, 1.0, 500.0),
    ]
    planner = PlannerStore(redis_url)
    try:
        plan = planner.publish(lambda v: Plan(v, time.time(), "fake-model", planned, {}, 0.0, 0.0))
        wait_for(lambda: state.plan_version == plan.version)
        assert state.instances["big"].weight == 1.5
        register(redis_url, backend, "small", "SM")  # registered after the plan: weighed on arrival
        wait_for(lambda: "small" in state.instances)
        assert state.instances["small"].weight == 0.5
        state.instances["big"].outstanding_tokens = 300  # work held elsewhere: 200 per unit of weight
        state.instances["small"].outstanding_tokens = 150  # 300 per unit of weight
        assert served_by(gw) == "big"
    finally:
        planner.close()


def test_expected_output_tokens_follow_the_predictors_length_distribution() -> None:
    edges = ClassEdges()
    old = Prediction(input_tokens=10, output_probs=(0.0, 0.0, 1.0))
    assert expected_output_tokens(old, edges, None) == 742  # no distribution: L counts as twice the M edge
    learnt = Prediction(input_tokens=10, output_probs=(0.0, 0.0, 1.0), expected_output_tokens=1234.4)
    assert expected_output_tokens(learnt, edges, None) == 1234
    assert expected_output_tokens(learnt, edges, 500) == 500  # capped by max_tokens
    assert expected_output_tokens(Prediction(10, (1.0, 0.0, 0.0), expected_output_tokens=0.2), edges, None) == 1
