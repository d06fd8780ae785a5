"""The routing core without LiteLLM: deployments matched to registry instances, the pick, retries, ejection and
what is recorded (a recording fake stands in for the Redis store, which test_router exercises for real)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import httpx
import openai
import pytest

from wattgate.classifier.api import MaxTokensPredictor
from wattgate.litellm_routing.core import (
    TICKET_KEY,
    EnergyRouting,
    Failure,
    Fallback,
    Outcome,
    base_url,
    failure_of,
)
from wattgate.planner.contract import InstanceRecord, Observation, Plan, PlannedInstance
from wattgate.profiles.classes import ClassEdges

MSG = [{"role": "user", "content": "hi"}]


class Recorded:
    """A ``Recorder`` that keeps what it is given."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, int, int]] = []
        self.observations: list[Observation] = []

    def record_load(self, pool: str, now: float, input_tokens: int, output_tokens: int) -> None:
        self.loads.append((pool, input_tokens, output_tokens))

    def record_observation(self, obs: Observation) -> None:
        self.observations.append(obs)


def record(id_: str, pool: str, port: int, state: str = "ready", conc: int = 256) -> InstanceRecord:
    return InstanceRecord(id_, f"http://10.0.0.1:{port}", "m", pool, "n1", state, max_concurrency=conc)


def deployment(port: int, id_: str | None = None, **info: Any) -> dict[str, Any]:
    return {
        "model_name": "chat",
        "litellm_params": {"model": "openai/m", "api_base": f"http://10.0.0.1:{port}/v1"},
        "model_info": {"id": id_ or f"d{port}", **info},
    }


def plan(serves: dict[str, list[str]], version: int = 1, loads: dict[str, tuple[str, float]] | None = None) -> Plan:
    instances = [PlannedInstance(i, p, "n1", [0], 2, 1200, rps, 300.0) for i, (p, rps) in (loads or {}).items()]
    return Plan(version, time.time(), "m", instances, {}, 0.0, 0.0, serves=serves)


def routing(recorder: Recorded | None = None, **kw: Any) -> EnergyRouting:
    opts = {"eject_after_failures": 3, "eject_cooldown_s": 10.0, "ticket_ttl_s": 600.0, **kw}
    return EnergyRouting(MaxTokensPredictor(), ClassEdges(), recorder=recorder or Recorded(), **opts)


def pick(core: EnergyRouting, deployments: list[dict[str, Any]], kwargs: dict[str, Any], now: float = 100.0) -> Any:
    return core.pick("chat", deployments, MSG, kwargs, now=now, wall=1.0e9)


def ok(kwargs: dict[str, Any], dep: dict[str, Any], **extra: Any) -> Outcome:
    return Outcome("req", dep, 200, completion_tokens=8, **extra)


FLEET = [record("ss-1", "SS", 1), record("sm-1", "SM", 2), record("sm-2", "SM", 3)]
DEPLOYMENTS = [deployment(1), deployment(2), deployment(3)]


def test_failures_count_as_in_the_gateway() -> None:
    def chain(outer: BaseException, inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise outer from exc
        except BaseException as caught:
            return caught

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    refused = chain(openai.APIConnectionError(request=request), httpx.ConnectError("refused"))
    assert failure_of(chain(RuntimeError("litellm wraps it"), refused)) == (Failure.CONNECT, 502)
    assert failure_of(openai.APITimeoutError(request=request)) == (Failure.COUNTED, 504)
    closed = chain(openai.APIConnectionError(request=request), httpx.RemoteProtocolError("closed"))
    assert failure_of(closed) == (Failure.DEFERRED, 502)  # closed without an answer: judged by the retry
    # litellm's aiohttp transport maps a reset of a kept-alive connection to httpx.ConnectError as well
    reset = chain(httpx.ConnectError("reset"), ConnectionResetError(104, "Connection reset by peer"))
    assert failure_of(chain(openai.APIConnectionError(request=request), reset)) == (Failure.DEFERRED, 502)
    broken = chain(openai.APIConnectionError(request=request), httpx.ReadError("mid-body"))
    assert failure_of(broken) == (Failure.COUNTED, 502)  # a broken transfer is the instance's at once

    class Status(Exception):
        def __init__(self, code: int) -> None:
            self.status_code = code

    assert failure_of(Status(503)) == (Failure.DEFERRED, 503)
    assert failure_of(Status(400)) == (Failure.NONE, 400)
    assert failure_of(Status(429)) == (Failure.NONE, 429)
    assert failure_of(ValueError("odd")) == (Failure.NONE, 500)


def test_deployments_are_matched_to_registry_instances_by_url_or_by_name() -> None:
    assert base_url("HTTP://10.0.0.1:8000/v1/") == base_url("http://10.0.0.1:8000") == "http://10.0.0.1:8000"
    rec = Recorded()
    core = routing(rec)
    assert pick(core, DEPLOYMENTS, {"max_tokens": 8}) is Fallback.NOT_READ  # nothing read from Redis yet
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SS": ["SS"]}))
    named = deployment(9, "by-name", wattgate_instance="ss-1")  # a URL the registry does not know, named instead
    kwargs: dict[str, Any] = {"max_tokens": 8}
    assert pick(core, [deployment(7), named], kwargs) == [named]
    assert core.instances["ss-1"].in_flight == 1
    cloud: dict[str, Any] = {"max_tokens": 8}  # a model group of other servers behind the same LiteLLM
    assert pick(core, [deployment(7), deployment(8)], cloud) is Fallback.UNREGISTERED
    assert "metadata" not in cloud and len(rec.loads) == 1  # neither classified nor recorded


def test_without_a_plan_litellm_picks_but_load_and_observations_are_recorded() -> None:
    rec = Recorded()
    core = routing(rec)
    core.apply_registry(FLEET)
    kwargs: dict[str, Any] = {"max_tokens": 8}
    assert pick(core, DEPLOYMENTS, kwargs) is Fallback.NO_PLAN
    token = kwargs["metadata"][TICKET_KEY]
    assert [p for p, _, _ in rec.loads] == ["SS"]
    core.finish(token, ok(kwargs, DEPLOYMENTS[2]), 101.0, 1.0e9)  # LiteLLM chose sm-2
    (obs,) = rec.observations
    assert (obs.instance, obs.pool, obs.predicted_type, obs.status, obs.output_tokens) == ("sm-2", "SM", "SS", 200, 8)
    assert not core.tickets


def test_the_plans_pool_takes_the_type_and_least_work_wins_within_it() -> None:
    rec = Recorded()
    core = routing(rec)
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SM": ["SS", "SM"]}))  # SS's load goes to pool SM
    first: dict[str, Any] = {"max_tokens": 8}
    second: dict[str, Any] = {"max_tokens": 8}
    assert pick(core, DEPLOYMENTS, first) == [DEPLOYMENTS[1]]
    assert pick(core, DEPLOYMENTS, second) == [DEPLOYMENTS[2]]  # sm-1 has work in flight now
    assert (core.instances["sm-1"].in_flight, core.instances["sm-2"].in_flight) == (1, 1)
    core.finish(first["metadata"][TICKET_KEY], ok(first, DEPLOYMENTS[1]), 101.0, 1.0e9)
    assert core.instances["sm-1"].in_flight == 0 and core.instances["sm-1"].outstanding_tokens == 0
    assert rec.observations[0].pool == "SM" and rec.observations[0].instance == "sm-1"
    core.apply_plan(plan({"SS": ["SS"]}, version=2))
    assert pick(core, DEPLOYMENTS, {"max_tokens": 8}) == [DEPLOYMENTS[0]]


def test_planned_load_weighs_instances_and_a_full_pool_spills() -> None:
    core = routing()
    core.apply_registry([record("sm-1", "SM", 2, conc=1), record("sm-2", "SM", 3), record("sl-1", "SL", 4)])
    core.apply_plan(plan({"SM": ["SS", "SM"]}, loads={"sm-1": ("SM", 3.0), "sm-2": ("SM", 1.0)}))
    deps = [deployment(2), deployment(3), deployment(4)]
    assert core.instances["sm-1"].weight == 1.5 and core.instances["sm-2"].weight == 0.5
    assert pick(core, deps, {"max_tokens": 8}) == [deps[0]]
    assert pick(core, deps, {"max_tokens": 8}) == [deps[1]]  # sm-1 at its concurrency bound
    core.instances["sm-2"].in_flight = 256
    assert pick(core, deps, {"max_tokens": 8}) == [deps[2]]  # pool SM full: SS spills on to SL
    core.instances["sl-1"].in_flight = 256
    assert pick(core, deps, {"max_tokens": 8}) == []  # nothing can take it: LiteLLM says so (no deployment)


def test_a_retry_goes_to_an_instance_not_tried_and_a_connect_error_ejects() -> None:
    rec = Recorded()
    core = routing(rec)
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SM": ["SS", "SM"]}))
    kwargs: dict[str, Any] = {"max_tokens": 8}
    assert pick(core, DEPLOYMENTS, kwargs) == [DEPLOYMENTS[1]]
    token = kwargs["metadata"][TICKET_KEY]
    # LiteLLM retries before the failure callback of the first attempt has run
    assert pick(core, DEPLOYMENTS, kwargs, now=100.5) == [DEPLOYMENTS[2]]
    assert core.instances["sm-1"].in_flight == 0 and core.instances["sm-2"].in_flight == 1
    core.finish(token, Outcome("req", DEPLOYMENTS[1], 502, Failure.CONNECT), 100.6, 1.0e9)  # the stale one
    assert core.instances["sm-2"].in_flight == 1  # the retry in flight is untouched
    assert core.instances["sm-1"].ejected_until == pytest.approx(110.6)
    core.finish(token, ok(kwargs, DEPLOYMENTS[2]), 101.0, 1.0e9)
    assert [(o.instance, o.status) for o in rec.observations] == [("sm-1", 502), ("sm-2", 200)]
    assert pick(core, DEPLOYMENTS, {"max_tokens": 8}, now=105.0) == [DEPLOYMENTS[2]]  # sm-1 ejected
    assert pick(core, DEPLOYMENTS, {"max_tokens": 8}, now=111.0) == [DEPLOYMENTS[1]]  # its cooldown is over


def attempt(core: EnergyRouting, kwargs: dict[str, Any], status: int, failure: Failure, now: float) -> Any:
    """One attempt of the request ``kwargs``: picked, then ended as ``status``; the deployment it went to."""
    (dep,) = pick(core, DEPLOYMENTS, kwargs, now=now)
    core.finish(kwargs["metadata"][TICKET_KEY], Outcome("r", dep, status, failure), now, 1e9)
    return dep


def test_who_is_blamed_for_a_5xx_is_the_gateways_rule() -> None:
    core = routing(max_ejection_percent=100.0)
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SM": ["SS", "SM"]}))
    sm1, sm2 = core.instances["sm-1"], core.instances["sm-2"]
    # a 5xx the retry on another instance answered: the first instance's
    kwargs: dict[str, Any] = {"max_tokens": 8}
    assert attempt(core, kwargs, 503, Failure.DEFERRED, 100.0) == DEPLOYMENTS[1]
    assert sm1.consecutive_failures == 0  # not judged yet
    assert attempt(core, kwargs, 200, Failure.NONE, 100.1) == DEPLOYMENTS[2]
    assert sm1.consecutive_failures == 1
    # a 5xx both instances gave: the request's, nobody's
    kwargs = {"max_tokens": 8}
    attempt(core, kwargs, 500, Failure.DEFERRED, 101.0)
    attempt(core, kwargs, 500, Failure.DEFERRED, 101.1)
    core.judge_unanswered(200.0)
    assert (sm1.consecutive_failures, sm2.consecutive_failures) == (1, 0)
    # a 5xx no retry followed: its instance's, once JUDGE_AFTER_S passed; a 4xx says nothing
    for n in range(2):
        kwargs = {"max_tokens": 8}
        attempt(core, kwargs, 400, Failure.NONE, 102.0 + n)
        assert attempt(core, {"max_tokens": 8}, 500, Failure.DEFERRED, 102.5 + n) == DEPLOYMENTS[1]
        core.judge_unanswered(103.0 + n)
        assert sm1.consecutive_failures == 1 + n  # too early
        core.judge_unanswered(108.0 + n)
    assert sm1.ejected_until == pytest.approx(118.0 + 1)  # the third failure in a row ejects it
    assert attempt(core, {"max_tokens": 8}, 200, Failure.NONE, 110.0) == DEPLOYMENTS[2]


def test_the_ejection_cap_and_panic_are_the_gateways() -> None:
    fleet = [record(f"sm-{n}", "SM", n) for n in range(1, 5)]
    deps = [deployment(n) for n in range(1, 5)]
    core = routing(max_ejection_percent=50.0, panic_threshold_percent=60.0)
    core.apply_registry(fleet)
    core.apply_plan(plan({"SM": ["SS", "SM"]}))
    for n in (1, 2, 3):  # connect errors eject at once, until half of the pool is out
        kwargs: dict[str, Any] = {"max_tokens": 8, "_excluded_deployment_ids": [f"d{m}" for m in range(1, 5) if m != n]}
        pick(core, deps, kwargs)
        core.finish(kwargs["metadata"][TICKET_KEY], Outcome("r", deps[n - 1], 502, Failure.CONNECT), 100.0, 1e9)
    assert [core.instances[f"sm-{n}"].ejected_until > 100.0 for n in (1, 2, 3, 4)] == [True, True, False, False]
    core.instances["sm-3"].ejected_until = 120.0  # ejected by hand: 1 of 4 routable, below the 60% panic line
    core.instances["sm-4"].in_flight = 256  # and it is full
    assert pick(core, deps, {"max_tokens": 8}, now=101.0) in ([deps[0]], [deps[1]], [deps[2]])  # panic


def test_litellm_exclusions_and_registry_states_are_respected() -> None:
    core = routing()
    core.apply_registry([record("ss-1", "SS", 1, state="draining"), record("ss-2", "SS", 2), record("ss-3", "SS", 3)])
    core.apply_plan(plan({"SS": ["SS"]}))
    kwargs: dict[str, Any] = {"max_tokens": 8, "_excluded_deployment_ids": ["d2"]}
    assert pick(core, DEPLOYMENTS, kwargs) == [DEPLOYMENTS[2]]  # ss-1 is draining, d2 excluded by LiteLLM
    core.apply_registry([record("ss-2", "SS", 2)])  # ss-3 gone from the registry: its deployment takes nothing
    assert pick(core, DEPLOYMENTS, {"max_tokens": 8}) == [DEPLOYMENTS[1]]
    assert "ss-3" not in core.instances


def test_forgotten_tickets_are_swept_and_release_their_instance() -> None:
    core = routing(ticket_ttl_s=60.0)
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SS": ["SS"]}))
    pick(core, DEPLOYMENTS, {"max_tokens": 8}, now=100.0)  # its callback never comes (the client went away)
    pick(core, DEPLOYMENTS, {"max_tokens": 8}, now=150.0)
    core.sweep(now=170.0)
    assert len(core.tickets) == 1 and core.instances["ss-1"].in_flight == 1


def test_fixed_instances_serve_the_pool_the_plan_gives_them_as_in_the_gateway() -> None:
    rec = Recorded()
    core = routing(rec)
    core.apply_registry([record("e0", "SS", 1), record("e1", "SM", 2)])  # the pools their agent registered
    deps = [deployment(1), deployment(2)]
    core.apply_plan(plan({"SS": ["SS"], "SM": ["SM"]}))
    assert pick(core, deps, {"max_tokens": 8}) == [deps[0]]  # an SS request: the registry's SS instance
    fixed = plan({"SM": ["SS", "SM"], "LL": ["LL"]}, version=2, loads={"e0": ("SM", 1.0), "e1": ("LL", 1.0)})
    core.apply_plan(dataclasses.replace(fixed, fixed=["e0", "e1"]))
    assert (core.instances["e0"].spec.pool, core.instances["e1"].spec.pool) == ("SM", "LL")
    kwargs: dict[str, Any] = {"max_tokens": 8}
    assert pick(core, deps, kwargs) == [deps[0]]  # sent to SM: e0 serves SM now, before its record says so
    core.finish(kwargs["metadata"][TICKET_KEY], ok(kwargs, deps[0]), 101.0, 1.0e9)
    assert rec.observations[-1].pool == "SM"
    core.apply_registry([record("e0", "SS", 1, conc=100), record("e1", "SM", 2)])  # a re-publish, old pools
    assert core.instances["e0"].spec.pool == "SM" and core.instances["e0"].spec.max_concurrency == 100
    core.apply_plan(dataclasses.replace(fixed, version=3))  # not listed as fixed: their registry pools again
    assert (core.instances["e0"].spec.pool, core.instances["e1"].spec.pool) == ("SS", "SM")
    assert pick(core, deps, {"max_tokens": 8}) == [deps[1]]  # SS goes to pool SM: e1 by its record
