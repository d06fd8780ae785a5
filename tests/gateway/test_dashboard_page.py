"""The gateway's live dashboard: the page and its assets, and /dashboard/data built from the gateway's own
metrics after real streamed requests through the openai client (no Redis: no node telemetry)."""

from __future__ import annotations

import time

import httpx
import openai

from tests.gateway.conftest import Servers
from wattgate.gateway.dashboard import pool_counts
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.profiles.classes import SloTargets


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
    assert 0.0 <= data["pools"][pool]["slo_attainment"] <= 1.0
    assert data["nodes"] == [] and data["plan"] is None and data["history"]
    assert httpx.get(f"{gw}/dashboard/data", timeout=5).headers["cache-control"] == "no-store"
