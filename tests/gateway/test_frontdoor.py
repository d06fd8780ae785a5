"""The front door on real sockets: head deadline, head size limit (431), body deadline, connection limit
with eviction, and OpenAI-format answers for what the HTTP parser refuses; each answer counted."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from tests.gateway.conftest import Servers
from tests.support import wait_for

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"


@contextmanager
def raw(url: str, timeout_s: float = 10.0) -> Iterator[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        yield sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the gateway closes the connection (a reset counts as closed)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def error_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, error


def counted(gw: str, endpoint: str, status: int) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(f'wattgate_gateway_requests_total{{endpoint="{endpoint}",pool="",status="{status}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_half_sent_head_gets_408_at_the_deadline_and_silence_is_closed(servers: Servers) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([url], client_header_timeout_s=0.5)
    with raw(gw) as half, raw(gw) as silent:
        t0 = time.monotonic()
        half.sendall(HALF_HEAD)
        status, error = error_of(read_all(half))
        assert (status, error["code"]) == (408, "request_timeout")
        assert 0.4 < time.monotonic() - t0 < 5
        assert read_all(silent) == b""  # sent nothing: closed without a word
    assert counted(gw, "connection", 408) == 1
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200


def test_the_next_head_on_a_kept_alive_connection_has_a_deadline_too(servers: Servers) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([url], client_header_timeout_s=0.5, client_keepalive_timeout_s=30)
    body = json.dumps(BODY).encode()
    with raw(gw) as sock:
        sock.sendall(HALF_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        first = b""
        while b'"finish_reason"' not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # idle longer than the head deadline: only the keep-alive timeout applies here
        sock.sendall(HALF_HEAD)
        status, _ = error_of(read_all(sock))
    assert status == 408


def test_headers_over_the_limit_get_431_before_they_are_buffered(servers: Servers) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([url], max_header_bytes=8192)
    with raw(gw) as sock:
        sock.sendall(HALF_HEAD + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n")
        status, error = error_of(read_all(sock))
    assert (status, error["code"]) == (431, "request_header_fields_too_large")
    with raw(gw) as sock:  # a 32 MB header: cut off at the limit, not read whole
        sent = 0
        try:
            sock.sendall(HALF_HEAD + b"X-Huge: ")
            for _ in range(32 * 16):
                sock.sendall(b"b" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 32 * 1024 * 1024
    headers = {"x-fine": "c" * 4000}  # under the limit: served
    assert httpx.post(gw + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
    assert counted(gw, "connection", 431) >= 1


def test_a_slow_body_gets_408_and_the_connection_closes(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], client_body_timeout_s=0.5)
    with raw(gw) as sock:
        sock.sendall(HALF_HEAD + b"Content-Length: 100\r\n\r\n" + b'{"model": ')
        answer = read_all(sock)
    status, error = error_of(answer)
    assert (status, error["code"]) == (408, "request_timeout")
    assert b"connection: close" in answer.lower()
    assert fake.received == []
    assert (
        'wattgate_gateway_requests_total{endpoint="chat",pool="-",status="408"} 1.0' in httpx.get(gw + "/metrics").text
    )


def test_what_the_parser_refuses_gets_an_openai_400(servers: Servers) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([url])
    with raw(gw) as sock:
        sock.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        status, error = error_of(read_all(sock))
    assert (status, error["code"]) == (400, "invalid_http_request")
    assert counted(gw, "connection", 400) == 1


def test_over_the_connection_limit_the_longest_waiting_connection_makes_room(servers: Servers) -> None:
    _, url = servers.backend()
    gw, state = servers.gateway([url], max_client_connections=4, client_header_timeout_s=30)
    with ExitStack() as stack:
        idle = [stack.enter_context(raw(gw)) for _ in range(4)]
        idle[1].sendall(HALF_HEAD)
        time.sleep(0.2)  # the gateway accepted them all
        for sock in idle:  # none was closed yet
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        with httpx.Client() as client:  # a new client still gets in: the oldest waiting connection goes
            assert client.get(gw + "/health").status_code == 200
            assert read_all(idle[0]) == b""
            # and one more: the client above now idles on keep-alive, behind the half-sent head
            assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
        assert read_all(idle[1]) == b""  # the half-sent one was next in line
    wait_for(lambda: "evicted" in httpx.get(gw + "/metrics").text)
    assert 'wattgate_gateway_client_connections_closed_total{reason="evicted"} 2.0' in httpx.get(gw + "/metrics").text
    assert state.instances["b0"].in_flight == 0


def test_over_the_limit_with_every_connection_busy_a_new_one_gets_503(servers: Servers) -> None:
    _, url = servers.backend(stall_after_first=30)
    gw, _ = servers.gateway([url], max_client_connections=2)
    with ExitStack() as stack:
        chunks = []  # keep the iterators: dropping one closes its stream
        for _ in range(2):
            held = stack.enter_context(httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}))
            chunks.append(held.iter_raw())
            next(chunks[-1])  # both connections are mid-response: neither may be evicted
        with raw(gw) as sock:
            status, error = error_of(read_all(sock))
        assert (status, error["code"]) == (503, "too_many_connections")
