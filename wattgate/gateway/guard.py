"""A request's guard: cancels the proxy's task when the client goes away or the request's deadline passes.

The disconnect watcher task is started by a timer after ``WATCH_AFTER_S``: a request that ends sooner
costs one timer, not a task; one that lasts is watched from then on (a client that left earlier is seen
at once, since ``receive`` then answers ``http.disconnect`` immediately). The deadline is one more timer:
at the first-byte deadline a stream that has not sent its first event is cancelled; otherwise the
timer moves on to the total deadline. ``reason`` says why the task was cancelled (None: not by us).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive

WATCH_AFTER_S = 0.05  # a request still running after this long gets a disconnect watcher

CLIENT_GONE = "client_gone"
FIRST_BYTE = "first_byte"
TOTAL = "total"


class RequestGuard:
    __slots__ = (
        "finished",
        "first_byte_at",
        "first_event",
        "loop",
        "reason",
        "receive",
        "task",
        "timer",
        "total_at",
        "watch_timer",
        "watcher",
    )

    def __init__(
        self, receive: Receive, task: asyncio.Task[Any] | None, first_byte_s: float | None, total_s: float
    ) -> None:
        """``first_byte_s`` (None: no first-byte deadline) and ``total_s`` count from now."""
        self.receive, self.task = receive, task
        self.finished = False  # the response is complete (or its last message is being sent)
        self.first_event = False  # a stream's first event went to the client
        self.reason: str | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.watch_timer = self.timer = None
        if task is None:
            self.loop, self.first_byte_at, self.total_at = None, 0.0, 0.0
            return
        self.loop = loop = task.get_loop()
        now = loop.time()
        self.total_at = now + total_s
        self.first_byte_at = now + first_byte_s if first_byte_s is not None else self.total_at
        self.watch_timer = loop.call_later(WATCH_AFTER_S, self._start_watch)
        self.timer = loop.call_at(min(self.first_byte_at, self.total_at), self._deadline)

    def _start_watch(self) -> None:
        if not self.finished:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self._fire(CLIENT_GONE)

    def _deadline(self) -> None:
        assert self.loop is not None
        if self.loop.time() < self.total_at and self.first_event:
            self.timer = self.loop.call_at(self.total_at, self._deadline)
            return
        self._fire(FIRST_BYTE if not self.first_event and self.first_byte_at < self.total_at else TOTAL)

    def _fire(self, reason: str) -> None:
        if self.task is not None and not self.finished and self.reason is None:
            self.reason = reason
            self.task.cancel()

    def close(self) -> None:
        self.finished = True
        for timer in (self.watch_timer, self.timer):
            if timer is not None:
                timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
