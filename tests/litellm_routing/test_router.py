"""wattgate's routing inside a real ``litellm.Router`` in front of `wattgate sim-backend` processes on loopback, with
a real Redis: the plan's pool takes each type, observations and load windows are recorded, a killed instance is
avoided, and serving goes on without Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import litellm
import pytest
import redis

from tests.litellm_routing.support import (
    GROUP,
    LITELLM_WARNINGS,
    Backend,
    model_list,
    observations,
    publish_plan,
    register,
    served,
    sim_backends,
    window_requests,
)
from tests.support import wait_for
from wattgate.classifier.api import Predictor
from wattgate.classifier.store import ClassifierStore
from wattgate.embedded_redis import EmbeddedRedis, free_port
from wattgate.gateway.settings import GatewaySettings
from wattgate.litellm_routing.callback import WattgateRouting, build_predictor
from wattgate.planner.store import PlannerStore

pytestmark = [pytest.mark.slow, *LITELLM_WARNINGS]
MAX_TOKENS = 8  # at most 94 output tokens: an S output for certain, so short prompts are of type SS


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Backend]]:
    with sim_backends({"ss-1": "SS", "sm-1": "SM", "sm-2": "SM"}) as started:
        yield started


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return build_predictor(GatewaySettings())  # the shipped classifier, loaded once for the module


def routing_for(redis_url: str | None, predictor: Predictor, **settings: Any) -> WattgateRouting:
    base = {"flush_interval_s": 0.05, "registry_refresh_s": 0.5, "redis_timeout_s": 2.0, "eject_cooldown_s": 60.0}
    return WattgateRouting(GatewaySettings(redis_url=redis_url, **{**base, **settings}), predictor=predictor)


async def send(router: litellm.Router, n: int, concurrency: int = 4) -> list[str]:
    """``n`` short chat requests, every other one streamed (with usage), ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        messages = [{"role": "user", "content": f"Say hello to number {i}."}]
        async with gate:
            if i % 2:
                reply = await router.acompletion(model=GROUP, messages=messages, max_tokens=MAX_TOKENS)
                return str(reply.choices[0].message.content)
            stream = await router.acompletion(
                model=GROUP,
                messages=messages,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    return await asyncio.gather(*(one(i) for i in range(n)))


def run(routing: WattgateRouting, router: litellm.Router, n: int, concurrency: int = 4) -> list[str]:
    async def main() -> list[str]:
        try:
            return await send(router, n, concurrency)
        finally:
            await routing.aclose()  # flushes the records

    return asyncio.run(main())


def landed(backends: dict[str, Backend], before: dict[str, int], total: int) -> dict[str, int]:
    """Requests each instance finished since ``before``, once ``total`` have (the counters move as responses end)."""

    def finished() -> dict[str, int] | None:
        delta = {k: v - before[k] for k, v in served(backends).items()}
        return delta if sum(delta.values()) >= total else None

    found: dict[str, int] = wait_for(finished, f"{total} requests finished at the sim-backends")
    return found


def test_requests_land_on_the_plans_pool_and_are_recorded(
    backends: dict[str, Backend], redis_url: str, predictor: Predictor, litellm_callbacks: list[object]
) -> None:
    register(redis_url, backends)
    publish_plan(redis_url, {"SM": ["SS", "SM"]})  # the plan sends SS's load to pool SM, none to pool SS
    routing = routing_for(redis_url, predictor)
    litellm_callbacks.append(routing)
    router = litellm.Router(model_list=model_list(backends), num_retries=0)
    before = served(backends)
    start_s = int(time.time())
    texts = run(routing, router, 12)
    end_s = int(time.time()) + 1
    assert all(len(t.split()) == MAX_TOKENS for t in texts)
    delta = landed(backends, before, 12)
    assert delta["ss-1"] == 0 and delta["sm-1"] + delta["sm-2"] == 12
    assert delta["sm-1"] > 0 and delta["sm-2"] > 0  # least outstanding work spreads the pool's load

    obs = observations(redis_url)
    assert len(obs) == 12
    assert {(o.pool, o.predicted_type, o.status, o.model) for o in obs} == {("SM", "SS", 200, "tiny")}
    assert {o.instance for o in obs} == {"sm-1", "sm-2"}
    assert all(o.output_tokens == MAX_TOKENS and o.input_tokens > 0 and o.max_tokens == MAX_TOKENS for o in obs)
    assert all(o.features and o.output_probs == [1.0, 0.0, 0.0] for o in obs)  # the shipped classifier ran
    streamed = [o for o in obs if o.ttft_s is not None]
    assert len(streamed) == 6 and all(o.tbt_s is not None and o.tbt_s > 0 for o in streamed)
    assert window_requests(redis_url) == {"SS": 12}
    # the planner and the classifier's retraining read them with their own readers, unchanged
    planner = PlannerStore(redis_url)
    clf = ClassifierStore(redis_url)
    try:
        assert planner.load_seconds(["SS", "SM"], start_s, end_s) == {"SS": 12.0, "SM": 0.0}
        report = clf.read_observations()
        assert len(report.samples) == 12 and report.skipped == 0
        assert {(s.model, s.output_tokens) for s in report.samples} == {("tiny", MAX_TOKENS)}
    finally:
        planner.close()
        clf.close()

    publish_plan(redis_url, {"SS": ["SS"], "SM": ["SM"]})  # a new plan: SS back to its own pool
    before = served(backends)
    run(routing, router, 4)
    assert landed(backends, before, 4) == {"ss-1": 4, "sm-1": 0, "sm-2": 0}


def test_without_a_plan_litellm_picks_and_the_load_is_still_recorded(
    backends: dict[str, Backend],
    redis_url: str,
    predictor: Predictor,
    litellm_callbacks: list[object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    register(redis_url, backends)  # a registry, but no plan yet
    routing = routing_for(redis_url, predictor)
    litellm_callbacks.append(routing)
    router = litellm.Router(model_list=model_list(backends), num_retries=0)
    before = served(backends)
    with caplog.at_level(logging.WARNING, logger="wattgate.litellm"):
        run(routing, router, 6)
    assert sum(landed(backends, before, 6).values()) == 6
    said = [r.getMessage() for r in caplog.records if "LiteLLM's own strategy" in r.getMessage()]
    assert len(said) == 1 and "no plan in Redis" in said[0]  # once, not per request
    assert window_requests(redis_url) == {"SS": 6}  # the planner gets the load to make its first plan from
    obs = observations(redis_url)
    assert len(obs) == 6 and {o.instance for o in obs} <= {"ss-1", "sm-1", "sm-2"}


def test_a_killed_instance_is_ejected_and_avoided(
    redis_url: str, predictor: Predictor, litellm_callbacks: list[object]
) -> None:
    with sim_backends({"sm-a": "SM", "sm-b": "SM"}) as pair:
        register(redis_url, pair)
        publish_plan(redis_url, {"SM": ["SS", "SM"]})
        routing = routing_for(redis_url, predictor)
        litellm_callbacks.append(routing)
        # LiteLLM's own cooldown off: what keeps requests away from the dead instance is wattgate's ejection
        router = litellm.Router(model_list=model_list(pair), num_retries=1, disable_cooldowns=True)
        pair["sm-a"].kill()  # sm-a is listed first: equal load, so wattgate tries it first
        texts = run(routing, router, 8, concurrency=1)
        assert all(len(t.split()) == MAX_TOKENS for t in texts)  # the one failed attempt was retried on sm-b
        assert pair["sm-b"].served() == 8
        obs = observations(redis_url)
        failed = [o for o in obs if o.status != 200]
        assert [(o.instance, o.status) for o in failed] == [("sm-a", 502)]  # one connect error, then avoided
        assert routing.core is not None and routing.core.instances["sm-a"].ejected_until > time.monotonic()
        assert sum(1 for o in obs if o.status == 200 and o.instance == "sm-b") == 8


def test_redis_unreachable_from_the_start_keeps_serving(
    backends: dict[str, Backend],
    predictor: Predictor,
    litellm_callbacks: list[object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    routing = routing_for(f"redis://127.0.0.1:{free_port()}/0", predictor, redis_timeout_s=0.3)
    litellm_callbacks.append(routing)
    router = litellm.Router(model_list=model_list(backends), num_retries=0)
    before = served(backends)
    with caplog.at_level(logging.WARNING, logger="wattgate.litellm"):
        texts = run(routing, router, 4)
    assert all(len(t.split()) == MAX_TOKENS for t in texts)
    assert sum(landed(backends, before, 4).values()) == 4
    assert any("nothing read from Redis" in r.getMessage() for r in caplog.records)


def test_redis_going_away_keeps_the_last_plan(
    backends: dict[str, Backend], predictor: Predictor, litellm_callbacks: list[object]
) -> None:
    server = EmbeddedRedis().start()
    try:
        register(server.url, backends)
        publish_plan(server.url, {"SM": ["SS", "SM"]})
        routing = routing_for(server.url, predictor, redis_timeout_s=0.3)
        litellm_callbacks.append(routing)
        router = litellm.Router(model_list=model_list(backends), num_retries=0)

        async def main() -> list[str]:
            try:
                first = await send(router, 4)
                server.stop()  # Redis goes away for good
                return first + await send(router, 8)
            finally:
                await routing.aclose()

        before = served(backends)
        texts = asyncio.run(main())
    finally:
        server.stop()
    assert all(len(t.split()) == MAX_TOKENS for t in texts)
    delta = landed(backends, before, 12)
    assert delta["ss-1"] == 0 and delta["sm-1"] + delta["sm-2"] == 12  # still by the last plan it saw


def test_closing_while_a_flush_waits_on_redis_keeps_its_batch(redis_url: str, predictor: Predictor) -> None:
    routing = routing_for(redis_url, predictor)
    admin = redis.Redis.from_url(redis_url)

    async def main() -> None:
        await routing.start()
        store = routing.store
        assert store is not None
        admin.execute_command("CLIENT", "PAUSE", "600", "WRITE")  # Redis holds writes for 0.6 s
        store.record_load("SS", time.time(), 10, 5)
        for _ in range(2000):  # within a few ticks the flusher takes the batch, and waits on Redis with it
            if not store.pending:
                break
            await asyncio.sleep(0.005)
        assert not store.pending
        await routing.aclose()

    try:
        asyncio.run(main())
    finally:
        admin.close()
    assert window_requests(redis_url) == {"SS": 1}
