"""The front door: uvicorn's httptools protocol with the limits a server facing careless clients needs.

uvicorn (0.54) reads a request head with no deadline and no size limit, and accepts connections until
the process runs out of file descriptors: a client that connects and sends half a request line holds
its connection forever, and 1,100 of them take down a gateway with a 1,024-file limit. uvicorn's own
options do not cover this: ``timeout_keep_alive`` starts only after a response, ``limit_concurrency``
is checked only once a head has been parsed (and answers plain text), and
``h11_max_incomplete_event_size`` applies to the h11 protocol only (and answers 400). An ASGI
middleware never sees a connection before its head is complete, and a socket timeout does not exist
in asyncio. So this subclass of uvicorn's httptools protocol adds, per connection:

- a head deadline (``client_header_timeout_s``, nginx's ``client_header_timeout``): from the
  connection's start, or a kept-alive connection's next request's first byte, to the end of the head;
  over it, 408 and close (a connection that sent nothing is just closed);
- a head size limit (``max_header_bytes``, Envoy's ``max_request_headers_kb``): counted before the
  bytes reach the parser, which would otherwise buffer a 32 MB header; over it, 431 and close;
- a connection limit (``max_client_connections``): a connection over it closes the connection that
  has waited longest for a request head (idle on keep-alive, or half-sent), so stalled clients cannot
  lock out new ones (nginx reuses idle connections the same way); with none waiting, 503 and close;
- OpenAI-format error bodies for all of these and for uvicorn's own "invalid HTTP request" 400.

Every answer sent here is counted in ``wattgate_gateway_requests_total{endpoint="connection"}``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from wattgate.gateway.errors import error_body
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.gateway.settings import GatewaySettings

log = logging.getLogger("wattgate.gateway.frontdoor")

FD_RESERVE = 64  # descriptors kept for everything but client connections (listener, Redis, logs, epoll)


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as Go programs do at start);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def auto_connection_limit() -> int:
    """Client connections the file limit allows: each may need an upstream socket too, and some are reserved."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, (soft - FD_RESERVE) // 2)


class FrontDoor:
    """What every connection of one server shares: the limits, the connections waiting for a request
    head (oldest first: the ones a new connection may evict), and the metrics to count in."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.header_timeout_s = settings.client_header_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.keepalive_timeout_s = settings.client_keepalive_timeout_s
        self.configured_limit = settings.max_client_connections
        self.max_connections = settings.max_client_connections or auto_connection_limit()
        self.waiting: dict[FrontDoorProtocol, None] = {}  # insertion order: waiting since
        self.metrics: GatewayMetrics | None = None  # set once the app's state exists (its lifespan)

    def start(self) -> None:
        """Fix the connection limit once the server's process limits are final."""
        self.max_connections = self.configured_limit or auto_connection_limit()
        log.info("front door: at most %d client connections", self.max_connections)

    def answered(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.request_done("connection", "", status)

    def closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def connections(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.client_connections.set(n)

    def evict_for(self, newcomer: FrontDoorProtocol) -> bool:
        """Close the connection that has waited longest for a request head; False when none waits."""
        for victim in self.waiting:
            if victim is not newcomer:
                victim.evict()
                return True
        return False


class FrontDoorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size limit and a connection limit."""

    door: ClassVar[FrontDoor]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # the bytes arriving now belong to a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes seen, to find a head's blank line split across reads
        self._done = False  # answered here and closing: ignore whatever else arrives

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        door = self.door
        door.connections(len(self.connections))
        if len(self.connections) > door.max_connections and not door.evict_for(self):
            door.closed("over_limit")
            self._answer(503, "the gateway has too many open connections; retry later", "too_many_connections")
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self.door.waiting.pop(self, None)
        super().connection_lost(exc)
        self.door.connections(len(self.connections))

    def evict(self) -> None:
        self.door.waiting.pop(self, None)
        self.door.closed("evicted")
        self._done = True
        self._stop_head_timer()
        if not self.transport.is_closing():
            self.transport.close()

    # -- the head -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self._in_head:
            seen = self._tail + data if self._tail else data  # a head's blank line may span two reads
            end = seen.find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(self._tail))
            if size > self.door.max_header_bytes:
                self.door.closed("header_too_large")
                self._answer(
                    431,
                    f"request headers are larger than the limit of {self.door.max_header_bytes} bytes",
                    "request_header_fields_too_large",
                )
                return
            self._head_bytes = size
            self._tail = seen[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection began
            self._head_timer = self.loop.call_later(self.door.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        self.door.waiting.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = not self.pipeline and (self.cycle is None or self.cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.door.waiting[self] = None  # idle on keep-alive: first in line to be evicted

    def _await_head(self) -> None:
        self.door.waiting[self] = None
        self._head_timer = self.loop.call_later(self.door.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._done or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; uvicorn's keep-alive timer covers what follows it
        self.door.waiting.pop(self, None)
        self.door.closed("header_timeout")
        if self._head_bytes:
            message = f"request head not received within {self.door.header_timeout_s:g} s"
            self._answer(408, message, "request_timeout")
        else:
            self._done = True
            self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _unsupported_upgrade_warning(self) -> None:
        """An upgrade request is served as plain HTTP (``ws="none"``): nothing to warn about, and a
        client must not be able to write two log lines per request."""

    # -- answers ------------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser rejects, as an OpenAI error body."""
        self.door.closed("bad_request")
        self._answer(400, f"invalid HTTP request: {msg}", "invalid_http_request")

    def _answer(self, status: int, message: str, code: str) -> None:
        """Send an OpenAI error with ``Connection: close`` and close; nothing more is read."""
        self._done = True
        self._stop_head_timer()
        self.door.waiting.pop(self, None)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = error_body(message, kind, None, code)
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        if not self.transport.is_closing():
            self.transport.write(b"".join([*head, b"\r\n", body]))
            self.transport.close()
        self.door.answered(status)


def protocol_class(door: FrontDoor) -> type[FrontDoorProtocol]:
    """A protocol class bound to ``door`` (uvicorn builds protocols from a class and its own arguments)."""
    return type("BoundFrontDoorProtocol", (FrontDoorProtocol,), {"door": door})


def server_options(door: FrontDoor) -> dict[str, Any]:
    """uvicorn ``Config`` keywords that put ``door`` in front of the app."""
    return {
        "http": protocol_class(door),
        "timeout_keep_alive": door.keepalive_timeout_s,
        "ws": "none",  # no WebSockets: an upgrade request is served as plain HTTP (and refused by the routes)
        "server_header": False,  # no software banner (and one header less to validate per response)
    }
