"""Upstream timeouts through real servers: no answer within the request's deadline is a 504 (not a 502),
counted, not retried, and one slow answer does not eject the instance; a backend slower than the read timeout
between bytes, but within it, is never cut."""

from __future__ import annotations

import time

import httpx

from tests.gateway.conftest import Servers

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_no_answer_within_the_deadline_is_a_504(servers: Servers) -> None:
    slow, url = servers.backend(ttft_s=5)  # answers nothing for 5 s
    gw, state = servers.gateway([url], request_timeout_s=0.3, eject_after_failures=3)
    t0 = time.monotonic()
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY, timeout=10)
    assert resp.status_code == 504
    assert time.monotonic() - t0 < 3  # the gateway gave up after its read timeout, not the backend's answer
    error = resp.json()["error"]
    assert error["code"] == "deadline_exceeded" and error["type"] == "server_error"
    assert metric(gw, 'wattgate_gateway_requests_total{endpoint="chat",pool="SM",status="504"}') == 1.0
    assert state.instances["b0"].routable(time.monotonic())  # one slow answer does not eject
    assert len(slow.received) == 1  # not retried: the backend may still be working on it


def test_a_fast_enough_backend_is_not_cut_by_the_read_timeout(servers: Servers) -> None:
    _, url = servers.backend(ttft_s=0.1, tbt_s=0.1, tokens=4)
    gw, _ = servers.gateway([url], read_timeout_s=2.0)
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}, timeout=10) as resp:
        text = resp.read().decode()
    assert resp.status_code == 200 and text.count("data: ") == 5  # four tokens and [DONE]
