"""The lean upstream transport against a raw socket server: keep-alive reuse, stale connections, bad responses."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from wattgate.embedded_redis import free_port
from wattgate.gateway.transport import FastTransport

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def serve(script: list[bytes | None]) -> tuple[asyncio.Server, list[int]]:
    """Answer the n-th request with script[n]; None: close the connection without answering."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while script:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)  # every test body is "{}"
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            answer = script.pop(0)
            if answer is None:
                break
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


async def post(client: httpx.AsyncClient, port: int) -> httpx.Response:
    return await client.post(f"http://127.0.0.1:{port}/v1/x", content=b"{}")


def run(script: list[bytes | None], n: int) -> tuple[list[int | str], int]:
    async def go() -> tuple[list[int | str], int]:
        server, connections = await serve(script)
        port = server.sockets[0].getsockname()[1]
        client = httpx.AsyncClient(transport=FastTransport(httpx.Limits()), timeout=2)
        out: list[int | str] = []
        for _ in range(n):
            try:
                out.append((await post(client, port)).status_code)
            except httpx.HTTPError as exc:
                out.append(type(exc).__name__)
        await client.aclose()
        server.close()
        return out, len(connections)

    return asyncio.run(go())


def test_keep_alive_reuses_one_connection() -> None:
    assert run([OK, OK, OK], 3) == ([200, 200, 200], 1)


def test_a_stale_kept_alive_connection_is_retried_once_on_a_fresh_one() -> None:
    # the server answers once, then drops the kept-alive connection when the next request arrives
    assert run([OK, None, OK], 2) == ([200, 200], 2)


def test_a_fresh_connection_closed_without_an_answer_is_an_error() -> None:
    assert run([None], 1) == (["RemoteProtocolError"], 1)


def test_garbage_is_a_protocol_error() -> None:
    assert run([b"NOT HTTP AT ALL\r\n\r\n"], 1)[0] == ["RemoteProtocolError"]


def test_chunked_body_and_interim_100_continue() -> None:
    chunked = b"HTTP/1.1 100 Continue\r\n\r\n" + (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    )

    async def go() -> bytes:
        server, _ = await serve([chunked])
        port = server.sockets[0].getsockname()[1]
        client = httpx.AsyncClient(transport=FastTransport(httpx.Limits()), timeout=2)
        resp = await post(client, port)
        await client.aclose()
        server.close()
        return resp.content

    assert asyncio.run(go()) == b"abc"


def test_connect_refused_is_a_connect_error() -> None:
    async def go() -> None:
        client = httpx.AsyncClient(transport=FastTransport(httpx.Limits()), timeout=2)
        try:
            await post(client, free_port())
        finally:
            await client.aclose()

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())
