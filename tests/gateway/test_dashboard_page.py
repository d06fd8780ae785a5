"""The gateway's live dashboard: the page and its assets, and /dashboard/data built from the gateway's own
metrics after real streamed requests through the openai client (no Redis: no node telemetry)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.gateway.conftest import Servers
from wattgate.gateway.dashboard import EVERY_POOL_TP8, SINGLE_POOL, Sampler, pool_counts
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.planner.contract import GpuReading, InstanceRecord, NodeTelemetry, Plan
from wattgate.profiles.classes import SloTargets


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not exported")


def test_pool_counts_use_each_pools_ttft_target() -> None:
    m = GatewayMetrics()
    for ttft in (0.1, 0.2, 0.4):  # SS target 0.25 s: two of three within
        m.requests.labels("chat", "SS", "200").inc()
        m.ttft.labels("SS").observe(ttft)
    m.requests.labels("chat", "LL", "503").inc()
    m.ttft.labels("LL").observe(1.2)  # L input target 1.5 s
    counts = pool_counts(m, SloTargets())
    assert counts["SS"] == {"requests": 3.0, "errors": 0.0, "ttft_count": 3.0, "ttft_ok": 2.0}
    assert counts["LL"]["errors"] == 1.0 and counts["LL"]["ttft_ok"] == 1.0
    sampler = Sampler(m, None)
    data = asyncio.run(sampler.sample({}, now=100.0))
    # attainment = share within the target: 2 of 3 (inverted it would read 1/3)
    assert data["pools"]["SS"]["slo_attainment"] == 2 / 3 and data["pools"]["LL"]["slo_attainment"] == 1.0
    assert sampler.snapshot()["history"][-1]["slo"] == {"SS": 2 / 3, "LL": 1.0}


class Cluster:
    """What the gateway's store would read from Redis: one node of two GPUs at 300 W each, and a plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    async def read_cluster(self) -> tuple[list[NodeTelemetry], Plan | None, list[InstanceRecord]]:
        gpus = [GpuReading(i, f"u{i}", "H100", 300.0, 0.0, 1980, None, "modelled") for i in range(2)]
        return [NodeTelemetry("n0", 0.0, gpus, {})], self.plan, []


def _plan(**fields: float | int) -> Plan:
    return Plan(1, 0.0, "m", [], {"SS": 1.0}, predicted_power_w=500.0, baseline_power_w=5000.0, **fields)  # type: ignore[arg-type]


def test_energy_saved_is_counted_against_the_single_pool_baseline_when_the_plan_has_it() -> None:
    single = Sampler(GatewayMetrics(), Cluster(_plan(single_pool_power_w=1000.0, single_pool_gpus=8)))
    for now in (100.0, 102.0):  # two samples 2 s apart
        data = asyncio.run(single.sample({}, now=now))
    assert data["energy"]["actual_j"] == 600.0 * 2
    assert data["energy"]["baseline_j"] == 1000.0 * 2 and data["energy"]["saved_j"] == 400.0 * 2
    assert data["energy"]["baseline"] == SINGLE_POOL and "modelled" in SINGLE_POOL
    older = Sampler(GatewayMetrics(), Cluster(_plan()))  # a plan from before the single-pool fields
    for now in (100.0, 102.0):
        data = asyncio.run(older.sample({}, now=now))
    assert data["energy"]["baseline_j"] == 5000.0 * 2 and data["energy"]["baseline"] == EVERY_POOL_TP8


def test_page_assets_and_data_after_streamed_requests(servers: Servers) -> None:
    _, backend = servers.backend()
    gw, _ = servers.gateway([backend])
    page = httpx.get(f"{gw}/dashboard", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="chart-power"' in page.text and "/dashboard/dashboard.js" in page.text
    js = httpx.get(f"{gw}/dashboard/dashboard.js", timeout=5)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "fetch(" in js.text
    assert httpx.get(f"{gw}/dashboard/dashboard.css", timeout=5).status_code == 200
    assert httpx.get(f"{gw}/dashboard/secret.py", timeout=5).status_code == 404
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key="x", max_retries=0)
    for _ in range(3):
        stream = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=True
        )
        assert list(stream)
    deadline = time.monotonic() + 10
    while True:
        data = httpx.get(f"{gw}/dashboard/data", timeout=5).json()
        if data.get("requests", 0) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert data["requests"] == 3
    (pool,) = data["pools"]
    assert data["pools"][pool]["ttft_count"] == 3
    # the same share the gateway's own /metrics histogram gives (streams within the pool's TTFT target)
    target = {"S": "0.25", "M": "0.5", "L": "1.5"}[pool[0]]
    within = metric(gw, f'wattgate_gateway_ttft_seconds_bucket{{le="{target}",pool="{pool}"}}')
    assert data["pools"][pool]["slo_attainment"] == within / 3
    assert data["nodes"] == [] and data["plan"] is None and data["history"]
    assert httpx.get(f"{gw}/dashboard/data", timeout=5).headers["cache-control"] == "no-store"
