"""A lean HTTP/1.1 transport for the shared ``httpx.AsyncClient``: asyncio protocol + httptools parser.

httpcore's pool polls every idle socket on every request and writes headers and body separately;
on the 2-core test machine that was most of the gateway's CPU per request (see README). This
transport keeps httpx as the client API (timeouts, exceptions, ``Response`` streaming) and does the
wire work itself: one write per request, keep-alive pools per host, back-pressure on the read
side. ``https://`` upstreams go to httpx's standard transport.

Errors are raised as httpx exceptions: ConnectError/ConnectTimeout (nothing was sent),
RemoteProtocolError (the server closed before answering), ReadError/ReadTimeout (mid-response).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import httptools
import httpx

_HIGH_WATER = 512 * 1024  # buffered response bytes before reading from the upstream pauses
_EOF = b""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.head_done = False
        self.complete = False
        self.error: Exception | None = None
        self.idle_since = 0.0
        self.got_bytes = False
        self.keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"invalid HTTP response from upstream: {exc}")
            self._wake()
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete and self.error is None:
            msg = "server disconnected without sending a complete response"
            self.error = httpx.ReadError(msg) if self.head_done else httpx.RemoteProtocolError(msg)
        self.transport = None
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: wait for the real one
            self.headers = []
            return
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the callback
        self._wake()

    def on_body(self, body: bytes) -> None:
        if not body:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self.complete = True
        self._wake()

    # -- request side --------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout_s: float | None) -> None:
        """Until the parser has news; one future and one timer (``asyncio.wait_for`` costs several of each)."""
        waiter = self.waiter = self.loop.create_future()
        timer = None if timeout_s is None else self.loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers, self.status, self.buffered = [], 0, 0
        self.chunks.clear()
        self.head_done = self.complete = self.got_bytes = self.keep_alive = False
        self.error = None

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.error is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("upstream read timed out"))


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; hands the connection back to the pool when done."""

    def __init__(self, owner: FastTransport, key: tuple[str, int], conn: _Conn, read_timeout_s: float | None) -> None:
        self.owner, self.key, self.conn, self.read_timeout_s = owner, key, conn, read_timeout_s
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.next_chunk():
            yield chunk

    async def next_chunk(self) -> bytes:
        """Every body byte that has arrived and was not handed out yet, as one piece (waiting for some
        if there is none), or b"" at the body's end. Pieces the parser split out of the same socket
        reads (one per chunk of a chunked body) arrived together, so they leave together."""
        conn = self.conn
        while not conn.chunks:
            if conn.complete:
                return _EOF
            if conn.error is not None:
                raise conn.error
            await conn.wait(self.read_timeout_s)
        chunks = conn.chunks
        if len(chunks) == 1:
            chunk = chunks.popleft()
        else:
            chunk = b"".join(chunks)
            chunks.clear()
        conn.buffered -= len(chunk)
        if conn.paused and conn.buffered < _HIGH_WATER // 2 and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        return chunk

    @property
    def ended(self) -> bool:
        """The whole body was handed out: the next ``next_chunk`` returns b"" without waiting."""
        return self.conn.complete and not self.conn.chunks

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if conn.complete and not conn.chunks and conn.usable and conn.keep_alive:
            self.owner.release(self.key, conn)
        else:
            conn.close()


class Upstream:
    """An upstream response as the proxy needs it: status, raw headers, body pieces as they arrive.

    Lighter than ``httpx.Response`` (no header normalisation, no decoding layers), which on this path
    cost more than the proxy's own work. Body reads raise httpx exceptions (ReadError, ReadTimeout).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: _Body | _HttpxBody) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: bytes) -> bytes:
        """The first value of header ``name`` (lowercase), or b""."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return b""

    async def next_chunk(self) -> bytes:
        """The body bytes that have arrived since the last call (waiting for some), or b"" at its end."""
        return await self.body.next_chunk()

    @property
    def ended(self) -> bool:
        """True once the whole body was handed out (only known for plain-http upstreams)."""
        return self.body.ended

    async def aclose(self) -> None:
        await self.body.aclose()


class _HttpxBody:
    """An ``httpx.Response`` body (the https fallback, or another transport) behind ``Upstream``'s interface."""

    ended = False

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        self.chunks = aiter(stream)

    async def next_chunk(self) -> bytes:
        async for chunk in self.chunks:
            if chunk:
                return chunk
        return _EOF

    async def aclose(self) -> None:
        await self.response.aclose()


async def send_via_httpx(
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeouts: dict[str, float | None],
) -> Upstream:
    """A POST through any httpx transport, answered as an ``Upstream``. httpx has one read timeout for the
    head and the body: a ``head`` timeout given (see ``FastTransport.post``) replaces it."""
    if "head" in timeouts:
        timeouts = {k: v for k, v in timeouts.items() if k != "head"} | {"read": timeouts["head"]}
    request = httpx.Request("POST", url, content=body, headers=headers, extensions={"timeout": timeouts})
    response = await transport.handle_async_request(request)
    return Upstream(response.status_code, response.headers.raw, _HttpxBody(response))


class FastTransport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits) -> None:
        # Open http connections are bounded by the router (each instance's max_concurrency);
        # ``limits`` bounds the idle ones here and everything on the https fallback.
        self.max_keepalive = limits.max_keepalive_connections or 500
        self.keepalive_expiry_s = limits.keepalive_expiry or 30.0
        self.idle: dict[tuple[str, int], list[_Conn]] = {}
        self.fallback = httpx.AsyncHTTPTransport(limits=limits)

    async def post(
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes, timeouts: dict[str, float | None]
    ) -> Upstream:
        """The proxy's path: POST ``body`` with ``headers`` (no host or length: added here), no httpx objects.
        ``timeouts``: httpx's keys, and ``head`` (the wait for the answer's head; default ``read``)."""
        if url.scheme != "http":
            return await send_via_httpx(self.fallback, url, headers, body, timeouts)
        key = (url.host, url.port or 80)
        parts = [b"POST " + url.raw_path + b" HTTP/1.1\r\nhost: " + url.netloc]
        parts += [name + b": " + value for name, value in headers]
        parts.append(b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return await self._send(key, b"\r\n".join(parts), timeouts)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            return await self.fallback.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        up = await self._send(
            (request.url.host, request.url.port or 80), _serialise(request, await request.aread()), timeouts
        )
        assert isinstance(up.body, _Body)
        return httpx.Response(up.status, headers=up.headers, stream=up.body, extensions={"http_version": b"HTTP/1.1"})

    async def _send(self, key: tuple[str, int], wire: bytes, timeouts: dict[str, float | None]) -> Upstream:
        read_s = timeouts.get("read")
        head_s = timeouts.get("head", read_s)
        conn, reused = self._idle(key), True
        if conn is None:
            conn, reused = await self._open(key, timeouts.get("connect")), False
        try:
            return await self._exchange(key, conn, wire, head_s, read_s)
        except httpx.RemoteProtocolError:
            if not reused:
                raise
        # a kept-alive connection the server had closed: nothing was answered, so send it once more fresh
        conn = await self._open(key, timeouts.get("connect"))
        return await self._exchange(key, conn, wire, head_s, read_s)

    async def _exchange(
        self, key: tuple[str, int], conn: _Conn, wire: bytes, head_s: float | None, read_s: float | None
    ) -> Upstream:
        try:
            assert conn.transport is not None
            conn.transport.write(wire)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(head_s)
        except BaseException:
            conn.close()
            raise
        return Upstream(conn.status, conn.headers, _Body(self, key, conn, read_s))

    def _idle(self, key: tuple[str, int]) -> _Conn | None:
        pool = self.idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable and now - conn.idle_since < self.keepalive_expiry_s:
                conn.reset()
                return conn
            conn.close()
        return None

    async def _open(self, key: tuple[str, int], connect_s: float | None) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(lambda: _Conn(loop), key[0], key[1]), connect_s)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {key[0]}:{key[1]} failed: {exc.strerror or exc}") from exc
        return conn

    def release(self, key: tuple[str, int], conn: _Conn) -> None:
        pool = self.idle.setdefault(key, [])
        if len(pool) >= self.max_keepalive:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()
        await self.fallback.aclose()


def _serialise(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    has_host = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            continue
        has_host = has_host or lower == b"host"
        lines.append(name + b": " + value)
    if not has_host:
        lines.append(b"host: " + request.url.netloc)
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


__all__ = ["FastTransport", "Upstream", "send_via_httpx"]
