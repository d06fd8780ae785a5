"""An OpenAI-compatible fake LLM server for tests and benchmarks, with TTFT, speed and failure knobs.

``FakeBackend`` is a plain ASGI app (no framework overhead, so benchmarks measure the gateway). It
records the bodies it received, and every header exactly as it arrived (each value, in order, repeats
included: a dict would keep only the last of two ``Authorization`` headers), so tests can check what the
gateway forwarded.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send


class Headers(list[tuple[str, str]]):
    """The (name, value) pairs of one request as they arrived, repeats and order kept."""

    def all(self, name: str) -> list[str]:
        """Every value of ``name`` (case-insensitive), in arrival order."""
        return [v for k, v in self if k.lower() == name.lower()]

    def one(self, name: str) -> str:
        """The value of ``name``, which must have arrived exactly once."""
        values = self.all(name)
        assert len(values) == 1, f"{name}: expected one value, got {values}"
        return values[0]


@dataclass
class Knobs:
    ttft_s: float = 0.0
    tbt_s: float = 0.0
    tokens: int = 3
    status: int = 200  # answer this status (with an OpenAI error body) to completions
    fail_times: int = -1  # answer `status` only this many times, then 200 (-1: always)
    health_status: int = 200
    stall_after_first: float = 0.0  # seconds to wait after the first token (for disconnect tests)
    die_after_first: bool = False  # drop the connection after the first token (a crashing engine)
    poison: str = ""  # a request whose body contains this fails: with poison_status, or 0: connection dropped
    poison_status: int = 0
    error_text: str = ""  # with `status`: answer this plain text instead of an OpenAI error body
    error_content_type: str = "text/plain"
    comments_s: float = 0.0  # a stream sends only SSE comments (": ping"), one every 0.1 s, for this long


@dataclass
class FakeBackend:
    model: str = "fake-model"
    name: str = "fake"
    knobs: Knobs = field(default_factory=Knobs)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    completed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    record: bool = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/health":
            await _json(send, self.knobs.health_status, {"status": "ok"})
            return
        if path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        doc = json.loads(body)
        if self.record:
            self.received.append(doc)
            self.headers.append(Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]))
            self.raw_bodies.append(body)
        if self.knobs.poison and self.knobs.poison.encode() in body:
            if not self.knobs.poison_status:
                await _drop(send)
                return
            await _json(send, self.knobs.poison_status, {"error": {"message": "poisoned", "type": "x"}})
            return
        if self.knobs.status != 200 and self.knobs.fail_times != 0 and self.knobs.error_text:
            self.knobs.fail_times -= 1
            text = self.knobs.error_text.encode()
            ctype = self.knobs.error_content_type.encode()
            await send(
                {"type": "http.response.start", "status": self.knobs.status, "headers": [(b"content-type", ctype)]}
            )
            await send({"type": "http.response.body", "body": text})
            return
        if self.knobs.status != 200 and self.knobs.fail_times != 0:
            self.knobs.fail_times -= 1
            await _json(
                send,
                self.knobs.status,
                {"error": {"message": "fake failure", "type": "x", "param": None, "code": None}},
            )
            return
        if path == "/v1/embeddings":
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "model": self.model,
                    "usage": {"prompt_tokens": 2, "total_tokens": 2},
                },
            )
            return
        self.in_flight += 1
        me = asyncio.current_task()
        done = asyncio.Event()
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, me, done))
        try:
            if doc.get("stream"):
                await self._stream(doc, path, send)
            elif self.knobs.die_after_first:
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
                await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
                raise ConnectionAbortedError("fake engine crashed mid-body")
            else:
                await asyncio.sleep(self.knobs.ttft_s + self.knobs.tbt_s * self.knobs.tokens)
                await _json(send, 200, self._full(doc, path))
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            if me is None or not watcher.done():
                raise
            me.uncancel()  # the gateway went away: stop quietly, like an engine aborting the request
        finally:
            done.set()
            watcher.cancel()
            self.in_flight -= 1

    def _n(self, doc: dict[str, Any]) -> int:
        cap = doc.get("max_tokens") or doc.get("max_completion_tokens")
        return min(self.knobs.tokens, cap) if isinstance(cap, int) else self.knobs.tokens

    def _full(self, doc: dict[str, Any], path: str) -> dict[str, Any]:
        n = self._n(doc)
        text = " ".join(f"t{i}" for i in range(n))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if path.endswith("chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
            obj = "chat.completion"
        else:
            choice["text"] = text
            obj = "text_completion"
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        return {
            "id": "cmpl-1",
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }

    async def _stream(self, doc: dict[str, Any], path: str, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chat = path.endswith("chat/completions")
        n = self._n(doc)
        await asyncio.sleep(self.knobs.ttft_s)
        for _ in range(int(self.knobs.comments_s / 0.1)):  # bytes, but no answer: a keep-alive comment
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
            await asyncio.sleep(0.1)
        for i in range(n):
            if i:
                await asyncio.sleep(self.knobs.tbt_s)
            delta = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": self.model,
                "choices": [{"index": 0, **delta, "finish_reason": None}],
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                    "more_body": True,
                }
            )
            if i == 0 and self.knobs.die_after_first:
                raise ConnectionAbortedError("fake engine crashed mid-stream")
            if i == 0 and self.knobs.stall_after_first:
                await asyncio.sleep(self.knobs.stall_after_first)
        if (doc.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(usage).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Close the connection without answering, as an engine that crashes on a request does: uvicorn refuses
    the invalid header value after marking the response started, and then closes the connection, so not
    a byte of an answer is written."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-drop", b"\x01")]})
    except RuntimeError:
        raise ConnectionAbortedError("fake engine dropped the request") from None


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any] | None, done: asyncio.Event) -> None:
    msg = await receive()
    if msg["type"] == "http.disconnect" and task is not None and not done.is_set():
        task.cancel()
