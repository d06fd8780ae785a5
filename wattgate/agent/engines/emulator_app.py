"""The HTTP face of an emulated vLLM instance: OpenAI completions (streamed or not), /health, /v1/models, /metrics,
and with sleep mode vLLM's dev-mode ``POST /sleep?level=1``, ``POST /wake_up`` and ``GET /is_sleeping`` (both POSTs
answer 200 with an empty body before the change is done, as vLLM's may; requests that arrive while the engine
sleeps wait for the wake-up).

A client that goes away (a stream closed, a non-streamed request's connection dropped) is aborted
at once, as vLLM aborts it: its sequence slot and KV cache are freed for the requests behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from wattgate.agent.engines.emulator import Emulator, Waiter
from wattgate.agent.engines.emulator_requests import ChunkWriter, SimRequestError, full_response, parse_request

log = logging.getLogger(__name__)


class _TokenStream(StreamingResponse):
    """A streamed response that aborts its request however it ends (done, client gone, server stopping)."""

    def __init__(self, emu: Emulator, rid: str, waiter: Waiter) -> None:
        super().__init__(_events(emu, rid, waiter), media_type="text/event-stream")
        self.emu, self.rid = emu, rid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.emu.finish(self.rid)


async def _events(emu: Emulator, rid: str, w: Waiter) -> AsyncIterator[bytes]:
    writer = ChunkWriter(rid, w.req)
    sent = 0
    while w.finished is None or sent < w.visible:
        await w.changed.wait()
        w.changed.clear()
        if w.visible > sent:  # every token that is due, in one write
            yield b"".join(writer.token(i) for i in range(sent, w.visible))
            sent = w.visible
    yield writer.finish(sent, emu.sim_fields(rid))


async def _finished_or_disconnected(request: Request, w: Waiter) -> bool:
    """Wait for the request's end (True) or for its client to go away (False)."""

    async def finished() -> None:
        while w.finished is None:
            await w.changed.wait()
            w.changed.clear()

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    done_task, gone_task = asyncio.create_task(finished()), asyncio.create_task(disconnect())
    try:
        await asyncio.wait((done_task, gone_task), return_when=asyncio.FIRST_COMPLETED)
        return done_task.done()
    finally:
        for task in (done_task, gone_task):
            task.cancel()
        await asyncio.gather(done_task, gone_task, return_exceptions=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the emulated engine stopped (/health now says 503): %r", task.exception(), exc_info=task.exception())


def build_app(emu: Emulator) -> Starlette:
    settings = emu.settings
    driver: list[asyncio.Task[None]] = []  # the engine's driver, once the app has started

    async def completions(request: Request, endpoint: str) -> Response:
        try:
            req = parse_request(
                await request.body(),
                request.headers,
                endpoint,
                model=settings.model,
                default_output_tokens=settings.default_output_tokens,
                edges=settings.edges,
            )
            await emu.until_awake()
            rid, waiter = emu.submit(req)
        except SimRequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        if req.stream:
            return _TokenStream(emu, rid, waiter)
        try:
            if not await _finished_or_disconnected(request, waiter):
                return Response(status_code=499)  # nobody is listening; the request is aborted below
            return JSONResponse(full_response(rid, req, waiter.visible, emu.sim_fields(rid)))
        finally:
            emu.finish(rid)

    async def chat(request: Request) -> Response:
        return await completions(request, "chat")

    async def text(request: Request) -> Response:
        return await completions(request, "completions")

    async def health(_: Request) -> Response:
        return Response(status_code=200 if driver and not driver[0].done() else 503)

    async def models(_: Request) -> Response:
        card = {"id": settings.model, "object": "model", "created": int(time.time()), "owned_by": "wattgate-sim"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(_: Request) -> Response:
        body = emu.metrics.text(emu.snapshot())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def sleep(request: Request) -> Response:
        level = request.query_params.get("level", "1")
        if level != "1":  # level 2 drops the weights too: a wake-up would need a reload this emulator does not model
            return JSONResponse({"error": f"sleep level {level} is not emulated (level 1 only)"}, status_code=400)
        emu.sleep()
        return Response(status_code=200)

    async def wake_up(_: Request) -> Response:
        emu.wake_up()
        return Response(status_code=200)

    async def is_sleeping(_: Request) -> Response:
        return JSONResponse({"is_sleeping": emu.is_sleeping()})

    sleep_routes = (
        [
            Route("/sleep", sleep, methods=["POST"]),
            Route("/wake_up", wake_up, methods=["POST"]),
            Route("/is_sleeping", is_sleeping, methods=["GET"]),
        ]
        if settings.sleep_mode
        else []
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(emu.run())
        task.add_done_callback(_log_failure)
        driver.append(task)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", text, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *sleep_routes,
        ],
        lifespan=lifespan,
    )
