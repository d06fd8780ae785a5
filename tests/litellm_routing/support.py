"""LiteLLM routing test helpers: `wattgate sim-backend` processes on loopback, the registry and plan in a real
Redis, and what wattgate recorded there."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_port
from wattgate.embedded_redis import free_port
from wattgate.gateway.store import publish_instance
from wattgate.planner.contract import InstanceRecord, Keys, Observation, Plan
from wattgate.planner.store import PlannerStore
from wattgate.procs import stop_process

MODEL = "tiny"  # what the sim-backends serve (vLLM's --served-model-name)
GROUP = "chat"  # the LiteLLM model group in front of them
# litellm 1.104.0 under pydantic 2.13 warns as it builds its models: not ours to fix, and not errors here
LITELLM_WARNINGS = (
    pytest.mark.filterwarnings("ignore:.*`ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm.*"),
)


@dataclass
class Backend:
    """One `wattgate sim-backend` process, registered as instance ``id`` of ``pool``."""

    id: str
    pool: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served(self) -> int:
        """Requests the instance finished (its vLLM V1 /metrics counter, summed over ``finished_reason``)."""
        text = httpx.get(self.url + "/metrics", timeout=5.0).text
        found = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "vllm:request_success_total"
        ]
        if not found:
            raise AssertionError("no vllm:request_success_total in the sim-backend's /metrics")
        return int(sum(found))

    def kill(self) -> None:
        assert self.proc is not None
        stop_process(self.proc)


@contextmanager
def sim_backends(pools: dict[str, str]) -> Iterator[dict[str, Backend]]:
    """Start one sim-backend per ``{instance id: pool}`` (fast: 50 simulated seconds per wall second)."""
    backends = {iid: Backend(iid, pool) for iid, pool in pools.items()}
    try:
        for b in backends.values():
            cmd = [sys.executable, "-m", "wattgate", "sim-backend", "--host", "127.0.0.1", "--port", str(b.port)]
            b.proc = subprocess.Popen([*cmd, "--model", MODEL, "--tp", "2", "--speed", "50", "--log-level", "warning"])
        for b in backends.values():
            wait_port(b.port, 60)
        yield backends
    finally:
        for b in backends.values():
            if b.proc is not None:
                stop_process(b.proc)


def register(redis_url: str, backends: dict[str, Backend], state: str = "ready") -> None:
    """Register every backend as an external instance of its pool, as an agent does."""
    for b in backends.values():
        rec = InstanceRecord(id=b.id, base_url=b.url, model=MODEL, pool=b.pool, node="n1", state=state)
        asyncio.run(publish_instance(redis_url, Keys(), rec))


def publish_plan(redis_url: str, serves: dict[str, list[str]]) -> Plan:
    """Publish a plan through the planner's own store: ``serves`` is pool -> the request types it serves."""
    planner = PlannerStore(redis_url)
    try:
        return planner.publish(lambda v: Plan(v, time.time(), MODEL, [], {}, 0.0, 0.0, serves=serves))
    finally:
        planner.close()


def model_list(backends: dict[str, Backend]) -> list[dict[str, Any]]:
    """The LiteLLM deployments of the model group: one per sim-backend, as users list their vLLM servers."""
    return [
        {
            "model_name": GROUP,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": b.url + "/v1", "api_key": "unused"},
        }
        for b in backends.values()
    ]


def observations(redis_url: str) -> list[Observation]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [Observation.from_json(f[b"json"]) for _, f in client.xrange(Keys().observations)]
    finally:
        client.close()


def window_requests(redis_url: str) -> dict[str, int]:
    """Requests per request type over every per-second load window (``{type}:requests`` fields)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        out: dict[str, int] = {}
        for key in client.scan_iter(match=Keys().load_second(0).rsplit(":", 1)[0] + ":*"):
            for name, value in client.hgetall(key).items():
                pool, _, what = name.partition(":")
                if what == "requests":
                    out[pool] = out.get(pool, 0) + int(value)
        return out
    finally:
        client.close()


def served(backends: dict[str, Backend]) -> dict[str, int]:
    return {iid: b.served() for iid, b in backends.items()}
