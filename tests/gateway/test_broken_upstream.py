"""An engine that dies mid-response: the client gets a clean error, the gateway keeps serving; and the SSE relay."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.gateway.conftest import Servers
from wattgate.gateway.sse import SseRelay

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def _quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="uvicorn.error")  # the fake engine's crash is on purpose


def test_stream_broken_after_first_bytes_ends_with_an_error_event_and_no_retry(servers: Servers) -> None:
    fake, url = servers.backend(die_after_first=True)
    other, other_url = servers.backend()
    gw, state = servers.gateway([url, other_url])
    state.instances["b1"].outstanding_tokens = 10**6  # make sure the dying one is chosen
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as resp:
        body = resp.read()
    assert resp.status_code == 200
    assert b"t0" in body  # what was sent before the crash reached the client
    assert b'"code":"upstream_error"' in body.splitlines()[-2]
    assert other.received == []  # never retried after bytes went out
    state.instances["b1"].outstanding_tokens = 0
    assert 'status="502"' in httpx.get(gw + "/metrics").text
    fake.knobs.die_after_first = False  # the engine is back: the gateway serves on
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200


def test_non_streamed_body_broken_is_a_502(servers: Servers) -> None:
    _, url = servers.backend(die_after_first=True)
    gw, _ = servers.gateway([url])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_error"


def test_keep_alive_connection_closed_by_the_backend_is_replaced(servers: Servers) -> None:
    _, url = servers.backend(keep_alive_s=0.1)  # the backend closes idle connections after 0.1 s
    gw, state = servers.gateway([url])
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
    time.sleep(0.4)
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
    assert state.instances["b0"].ejected_until == 0.0


def test_relay_splits_events_across_reads_and_strips_only_the_usage_chunk() -> None:
    relay = SseRelay(strip_usage=True)
    first = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"del'
    assert relay.feed(first) == b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'  # the half event waits
    out = relay.feed(b'ta":{"content":"b"}}]}\r\n\r\ndata: {"choices":[],"usage":{"completion_tokens":2}}\n\n')
    assert out == b'data: {"choices":[{"delta":{"content":"b"}}]}\r\n\r\n'
    assert relay.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert relay.usage == {"completion_tokens": 2}
    assert relay.events == 2
    keep = SseRelay(strip_usage=False)
    usage_chunk = b'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
    assert keep.feed(usage_chunk) == usage_chunk
    assert keep.usage == {"completion_tokens": 2}


def test_relay_keeps_usage_inside_content_chunks() -> None:
    relay = SseRelay(strip_usage=True)
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"completion_tokens":1}}\n\n'
    assert relay.feed(chunk) == chunk  # a chunk with choices is content, even when it carries usage
    assert relay.flush() == b""


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_relay_strips_usage_from_events_that_arrived_together(sep: bytes) -> None:
    """Pieces of one upstream read leave as one piece: the same bytes as when fed event by event."""
    events = [b'data: {"choices":[{"delta":{"content":"t%d "}}]}' % i for i in range(8)]
    events += [b'data: {"choices":[],"usage":{"completion_tokens":8}}', b"data: [DONE]"]
    one_by_one = SseRelay(strip_usage=True)
    expected = b"".join(one_by_one.feed(e + sep) for e in events)
    together = SseRelay(strip_usage=True)
    assert together.feed(b"".join(e + sep for e in events)) == expected
    assert b"usage" not in expected and expected.count(b"data:") == 9
    assert together.usage == one_by_one.usage == {"completion_tokens": 8}
    assert together.events == one_by_one.events == 8
