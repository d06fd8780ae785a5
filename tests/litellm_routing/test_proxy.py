"""wattgate's routing inside the real LiteLLM proxy (scripts/install_litellm_proxy), configured as a callback in its
config.yaml, in front of `wattgate sim-backend` processes, driven by the official openai client, with a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from bench.litellm_leg import litellm_installed, litellm_proxy_with, proxy_log, wattgate_in_proxy
from tests.litellm_routing.support import (
    GROUP,
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
from wattgate.embedded_redis import EmbeddedRedis, free_port
from wattgate.planner.contract import Observation

MAX_TOKENS = 8  # an S output for certain: short prompts are of type SS
CALLBACK = "wattgate.litellm_routing.proxy.wattgate_routing"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (litellm_installed() and wattgate_in_proxy()),
        reason="LiteLLM proxy (with this checkout's wattgate) not installed: run scripts/install_litellm_proxy",
    ),
]


def proxy_config(backends: dict[str, Backend]) -> str:
    """What a user writes: their vLLM servers as deployments of one group, wattgate's routing as a callback."""
    config: dict[str, Any] = {
        "model_list": model_list(backends),
        "litellm_settings": {"callbacks": [CALLBACK], "num_retries": 1, "request_timeout": 60, "telemetry": False},
        # LiteLLM's own cooldown off: what keeps requests away from a dead instance is wattgate's ejection
        "router_settings": {"disable_cooldowns": True},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def wattgate_env(redis_url: str) -> dict[str, str]:
    return {
        "WATTGATE_REDIS_URL": redis_url,
        "WATTGATE_FLUSH_INTERVAL_S": "0.05",
        "WATTGATE_REGISTRY_REFRESH_S": "0.5",
        "WATTGATE_REDIS_TIMEOUT_S": "0.5",
        "WATTGATE_EJECT_COOLDOWN_S": "120",
    }


def chat(client: openai.OpenAI, i: int) -> str:
    messages: Any = [{"role": "user", "content": f"Say hello to number {i}."}]
    if i % 2:
        return str(
            client.chat.completions.create(model=GROUP, messages=messages, max_tokens=MAX_TOKENS)
            .choices[0]
            .message.content
        )
    stream = client.chat.completions.create(model=GROUP, messages=messages, max_tokens=MAX_TOKENS, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def since(backends: dict[str, Backend], before: dict[str, int], total: int) -> dict[str, int]:
    def finished() -> dict[str, int] | None:
        delta = {k: v - before[k] for k, v in served(backends).items()}
        return delta if sum(delta.values()) >= total else None

    found: dict[str, int] = wait_for(finished, f"{total} requests finished at the sim-backends")
    return found


def observed(redis_url: str, n: int) -> list[Observation]:
    """The observations in Redis, once there are ``n`` (the proxy flushes them in the background)."""

    def enough() -> list[Observation] | None:
        found = observations(redis_url)
        return found if len(found) >= n else None

    result: list[Observation] = wait_for(enough, f"{n} observations in Redis")
    return result


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    with sim_backends({"ss-1": "SS", "sm-1": "SM", "sm-2": "SM"}) as started:
        yield started


def test_proxy_routes_by_plan_records_avoids_a_dead_instance_and_outlives_redis(
    backends: dict[str, Backend],
) -> None:
    server = EmbeddedRedis().start()
    try:
        register(server.url, backends)
        publish_plan(server.url, {"SM": ["SS", "SM"]})  # the plan sends SS's load to pool SM
        with litellm_proxy_with(proxy_config(backends), GROUP, env=wattgate_env(server.url)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            before = served(backends)
            assert all(len(chat(client, i).split()) == MAX_TOKENS for i in range(8))
            delta = since(backends, before, 8)
            assert delta["ss-1"] == 0 and delta["sm-1"] + delta["sm-2"] == 8, proxy_log(url)[-3000:]

            obs = observed(server.url, 8)
            assert {(o.pool, o.predicted_type, o.status) for o in obs} == {("SM", "SS", 200)}
            assert {o.instance for o in obs} <= {"sm-1", "sm-2"}
            assert all(o.features and o.output_tokens == MAX_TOKENS and o.max_tokens == MAX_TOKENS for o in obs)
            assert sum(o.ttft_s is not None for o in obs) == 4  # the streamed half
            assert window_requests(server.url) == {"SS": 8}

            backends["sm-1"].kill()  # sm-1 listed first: with equal load it is tried first, once
            before = served({k: b for k, b in backends.items() if k != "sm-1"})
            assert all(len(chat(client, i).split()) == MAX_TOKENS for i in range(6))
            assert since({k: b for k, b in backends.items() if k != "sm-1"}, before, 6) == {"ss-1": 0, "sm-2": 6}
            failed = wait_for(lambda: [o for o in observations(server.url) if o.status != 200], "the failed attempt")
            assert [(o.instance, o.status) for o in failed] == [("sm-1", 502)]

            server.stop()  # Redis goes away: the last plan and registry stay in force
            before = served({k: b for k, b in backends.items() if k != "sm-1"})
            assert all(len(chat(client, i).split()) == MAX_TOKENS for i in range(4))
            assert since({k: b for k, b in backends.items() if k != "sm-1"}, before, 4) == {"ss-1": 0, "sm-2": 4}
    finally:
        server.stop()


def test_proxy_without_redis_keeps_serving_with_litellms_own_strategy(backends: dict[str, Backend]) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with litellm_proxy_with(proxy_config(backends), GROUP, env=wattgate_env(nowhere)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        before = served(backends)
        assert all(len(chat(client, i).split()) == MAX_TOKENS for i in range(6))
        assert sum(since(backends, before, 6).values()) == 6
        said = wait_for(lambda: "LiteLLM's own strategy" in proxy_log(url), "the fallback warning in the proxy log")
        assert said and "nothing read from Redis" in proxy_log(url)
