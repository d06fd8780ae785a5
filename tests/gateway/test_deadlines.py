"""Request deadlines (first byte and total, per request class), the buffered answer's size cap, and
backends' non-JSON errors turned into OpenAI error bodies, through real servers."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import Servers
from tests.support import wait_for
from wattgate.gateway.settings import Deadline

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}  # type SM


def stream_events(gw: str, timeout_s: float = 30) -> tuple[list[dict[str, object]], float]:
    """The data events of one streamed chat request (the last may be an error event) and its seconds."""
    t0 = time.monotonic()
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}, timeout=timeout_s) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    return [json.loads(line[6:]) for line in lines], time.monotonic() - t0


def metric(gw: str, name: str) -> str:
    return "\n".join(line for line in httpx.get(gw + "/metrics").text.splitlines() if line.startswith(name))


def test_a_stream_without_its_first_event_ends_at_the_first_byte_deadline(servers: Servers) -> None:
    fake, url = servers.backend(ttft_s=30)
    gw, state = servers.gateway([url], first_byte_timeout_s=0.5)
    events, took = stream_events(gw)
    assert took < 10
    assert events[-1]["error"]["code"] == "deadline_exceeded"  # type: ignore[index]
    assert 'kind="first_byte"} 1.0' in metric(gw, "wattgate_gateway_deadline_exceeded_total")
    wait_for(lambda: fake.cancelled == 1, "the upstream request to be cancelled")
    assert state.instances["b0"].in_flight == 0


def test_sse_comments_are_no_answer(servers: Servers) -> None:
    _, url = servers.backend(comments_s=30)  # a byte every 0.1 s: the read timeout never fires
    gw, _ = servers.gateway([url], first_byte_timeout_s=0.6, read_timeout_s=0.3)
    events, took = stream_events(gw)
    assert took < 10
    assert [e["error"]["code"] for e in events] == ["deadline_exceeded"]  # type: ignore[index]


def test_a_trickling_stream_ends_at_the_total_deadline(servers: Servers) -> None:
    _, url = servers.backend(tokens=200, tbt_s=0.05)  # 10 s of tokens
    gw, _ = servers.gateway([url], request_timeout_s=1.0)
    events, took = stream_events(gw)
    assert 0.9 < took < 8
    assert len(events) > 3  # tokens went out until the deadline
    assert events[-1]["error"]["code"] == "deadline_exceeded"  # type: ignore[index]
    assert 'kind="total"} 1.0' in metric(gw, "wattgate_gateway_deadline_exceeded_total")


def test_a_non_streamed_request_gets_504_at_its_deadline(servers: Servers) -> None:
    _, url = servers.backend(ttft_s=30)
    gw, _ = servers.gateway([url], request_timeout_s=0.5)
    client = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-model", messages=BODY["messages"], max_tokens=200)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 10
    assert info.value.status_code == 504
    assert info.value.code == "deadline_exceeded"
    assert 'status="504"} 1.0' in metric(gw, "wattgate_gateway_requests_total")


def test_a_request_class_has_its_own_deadline(servers: Servers) -> None:
    _, url = servers.backend(ttft_s=2)
    gw, _ = servers.gateway([url], request_timeout_s=30, class_deadlines=(("SM", Deadline(30, 0.5)),))
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 504  # an SM request: 0.5 s
    short = {**BODY, "max_tokens": 10}  # an SS request: the default 30 s
    assert httpx.post(gw + "/v1/chat/completions", json=short, timeout=30).status_code == 200


def test_a_non_streamed_answer_over_the_size_cap_is_a_502(servers: Servers) -> None:
    _, url = servers.backend(tokens=2000)
    gw, _ = servers.gateway([url], max_response_bytes=4096)
    resp = httpx.post(gw + "/v1/chat/completions", json={**BODY, "max_tokens": 2000})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_response_too_large"
    assert httpx.post(gw + "/v1/chat/completions", json={**BODY, "max_tokens": 5}).status_code == 200


@pytest.mark.parametrize(
    ("status", "text", "ctype"),
    [(503, "engine overloaded", "text/plain"), (502, "<html><h1>502 Bad Gateway</h1></html>", "text/html")],
)
def test_a_backends_non_json_error_reaches_the_client_as_an_openai_error(
    servers: Servers, status: int, text: str, ctype: str
) -> None:
    _, url = servers.backend(status=status, error_text=text, error_content_type=ctype)
    gw, _ = servers.gateway([url])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "Bad Gateway" in error["message"] or "overloaded" in error["message"]


def test_a_backends_odd_json_error_is_reshaped(servers: Servers) -> None:
    _, url = servers.backend(
        status=422, error_text='{"detail": "field required"}', error_content_type="application/json"
    )
    gw, _ = servers.gateway([url])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == "backend answered HTTP 422: field required"
