"""``wattgate sim-backend``: an OpenAI-compatible server that behaves like one vLLM instance, driven by a profile.

The batching model (``sim_model``) runs in simulated time, paced to the wall clock: simulated
seconds = wall seconds since start x ``speed``. Tokens leave at their scheduled simulated time
(never earlier in wall time); every duration the server reports is in simulated seconds and
modelled, never measured: the ``wattgate_sim`` object of each response (``ttft_s``,
``tbt_mean_s``, ``queue_s``, ``load_rps``, ``sm_clock_mhz``, ``request_type``) and /metrics.
The SM clock is read from the instance's simulated GPUs (the slowest one gates a TP group), and
the modelled instance power is written to them, split evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from wattgate.agent.engines.sim_model import BatchModel, SimEngineError, SimRequest, SimSettings, TokenEvent
from wattgate.agent.engines.sim_requests import (
    ChunkWriter,
    ParsedRequest,
    SimRequestError,
    full_response,
    parse_request,
)
from wattgate.agent.gpu.base import GpuError
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.profiles.classes import ClassEdges
from wattgate.profiles.table import Profile

log = logging.getLogger(__name__)
CLOCK_POLL_S = 0.05  # wall seconds between reads of the GPUs' locked clock
POWER_PUBLISH_S = 0.1  # wall seconds between power updates written to the GPUs
MAX_SLEEP_S = 0.05
POWER_VALID_S = 5.0  # wall seconds a power record holds if this process dies without writing idle


@dataclass(frozen=True)
class SimServerSettings:
    model: str
    tp: int
    speed: float = 1.0
    max_batch: int = 256
    load_window_s: float = 30.0
    default_output_tokens: int = 64
    seed: int = 0
    edges: ClassEdges = field(default_factory=ClassEdges)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise SimEngineError(f"--speed must be > 0, got {self.speed}")
        if self.default_output_tokens < 1:
            raise SimEngineError("the default output length must be >= 1 token")


class SimEngine:
    """Drives a BatchModel in (compressed) real time and hands each request its tokens."""

    def __init__(self, profile: Profile, settings: SimServerSettings, gpus: Sequence[SimulatedGpu]) -> None:
        if len(gpus) != settings.tp:
            raise SimEngineError(f"TP{settings.tp} needs {settings.tp} GPUs, got {len(gpus)}")
        self.settings = settings
        self.gpus = tuple(gpus)
        idle = gpus[0].idle_power_w if gpus else 70.0
        self.model = BatchModel(
            profile,
            SimSettings(settings.tp, settings.max_batch, settings.load_window_s, idle, settings.seed),
        )
        self._t0 = time.monotonic()
        # request id -> (its token queue, whether it wants every token or only the last)
        self._queues: dict[str, tuple[asyncio.Queue[TokenEvent], bool]] = {}
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._clock_failing = False
        self._clock_mhz = self._read_clock(default=1980)
        self._clock_read_at = 0.0
        self._power_at = 0.0
        self.power_w = self.model.power_w(0.0, self._clock_mhz)
        self.gpu_errors = 0

    # -- time and GPUs ---------------------------------------------------------------------
    def now_s(self) -> float:
        return (time.monotonic() - self._t0) * self.settings.speed

    @property
    def clock_mhz(self) -> int:
        return self._clock_mhz

    def _read_clock(self, default: int) -> int:
        try:
            clock = min(g.sm_clock_mhz() for g in self.gpus)
        except GpuError as exc:
            if not self._clock_failing:  # log the change, not every 50 ms poll
                log.warning("cannot read the simulated GPU clock, keeping %s MHz: %s", default, exc)
            self._clock_failing = True
            return default
        if self._clock_failing:
            log.warning("simulated GPU clock readable again: %s MHz", clock)
        self._clock_failing = False
        return clock

    def _refresh(self, now_s: float) -> None:
        wall = time.monotonic()
        if wall - self._clock_read_at >= CLOCK_POLL_S:
            self._clock_mhz = self._read_clock(self._clock_mhz)
            self._clock_read_at = wall
        if wall - self._power_at >= POWER_PUBLISH_S:
            self._power_at = wall
            self.power_w = self.model.power_w(now_s, self._clock_mhz)
            self._publish(self.power_w)

    def _publish(self, power_w: float) -> None:
        for gpu in self.gpus:
            try:
                gpu.set_power_w(power_w / len(self.gpus), valid_for_s=POWER_VALID_S)
            except GpuError as exc:
                self.gpu_errors += 1
                log.warning("cannot write the power of simulated GPU %s: %s", gpu.index, exc)

    # -- the driver loop -------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                now = self.now_s()
                self._refresh(now)
                for ev in self.model.advance(now, self._clock_mhz):
                    entry = self._queues.get(ev.request_id)
                    if entry is not None and (entry[1] or ev.last):
                        entry[0].put_nowait(ev)
                nxt = self.model.next_event_s()
                delay = MAX_SLEEP_S if nxt is None else (nxt - self.now_s()) / self.settings.speed
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(MAX_SLEEP_S, max(delay, 0.0005))):
                        await self._wake.wait()
        finally:
            for gpu in self.gpus:
                with contextlib.suppress(GpuError):
                    gpu.set_idle()

    # -- requests --------------------------------------------------------------------------
    def submit(self, req: ParsedRequest) -> tuple[str, SimRequest, asyncio.Queue[TokenEvent]]:
        prefix = "chatcmpl" if req.endpoint == "chat" else "cmpl"
        rid = f"{prefix}-sim{next(self._ids)}"
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[rid] = (queue, req.stream)
        try:
            sim_req = self.model.submit(
                rid, req.rtype, req.input_tokens, req.output_tokens, now_s=self.now_s(), clock_mhz=self._clock_mhz
            )
        except SimEngineError as exc:
            del self._queues[rid]
            raise SimRequestError(str(exc)) from exc
        self._wake.set()
        return rid, sim_req, queue

    def finish(self, rid: str) -> None:
        self._queues.pop(rid, None)
        req = self.model.get(rid)
        if req is not None and not req.done:
            self.model.cancel(rid, self.now_s(), self._clock_mhz)
            self._wake.set()
        self.model.release(rid)

    @staticmethod
    def sim_fields(req: SimRequest) -> dict[str, Any]:
        return {
            "timing": "modelled",
            "time_unit": "simulated_s",
            "request_type": req.rtype.name,
            "input_tokens": req.input_tokens,
            "output_tokens": req.emitted,
            "queue_s": None if req.admitted_s is None else req.admitted_s - req.arrival_s,
            "ttft_s": req.ttft_s,
            "tbt_mean_s": req.tbt_mean_s,
            "load_rps": req.load_rps,
            "sm_clock_mhz": req.sm_clock_mhz,
        }


def _error(exc: SimRequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _stream(
    engine: SimEngine, rid: str, req: ParsedRequest, sim_req: SimRequest, queue: asyncio.Queue[TokenEvent]
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(rid, req)
    try:
        done = False
        while not done:
            ev = await queue.get()
            parts = [writer.token(ev.index)]
            done = ev.last
            while not done and not queue.empty():  # coalesce tokens that are already due
                ev = queue.get_nowait()
                parts.append(writer.token(ev.index))
                done = ev.last
            yield b"".join(parts)
        yield writer.finish(sim_req.emitted, engine.sim_fields(sim_req))
    finally:
        engine.finish(rid)


async def _finished_or_disconnected(request: Request, queue: asyncio.Queue[TokenEvent]) -> bool:
    """Wait for the last token (True) or for the client to go away (False), as vLLM aborts such requests."""

    async def last_token() -> None:
        while not (await queue.get()).last:
            pass

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    done_task, gone_task = asyncio.create_task(last_token()), asyncio.create_task(disconnect())
    try:
        await asyncio.wait((done_task, gone_task), return_when=asyncio.FIRST_COMPLETED)
        return done_task.done()
    finally:
        for task in (done_task, gone_task):
            task.cancel()
        await asyncio.gather(done_task, gone_task, return_exceptions=True)


def build_app(engine: SimEngine) -> Starlette:
    settings = engine.settings

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
            rid, sim_req, queue = engine.submit(req)
        except SimRequestError as exc:
            return _error(exc)
        if req.stream:
            return StreamingResponse(_stream(engine, rid, req, sim_req, queue), media_type="text/event-stream")
        try:
            if not await _finished_or_disconnected(request, queue):
                return Response(status_code=499)  # nobody is listening; the slot is freed below
            return JSONResponse(full_response(rid, req, sim_req.emitted, engine.sim_fields(sim_req)))
        finally:
            engine.finish(rid)

    async def chat(request: Request) -> Response:
        return await completions(request, "chat")

    async def text(request: Request) -> Response:
        return await completions(request, "completions")

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        card = {"id": settings.model, "object": "model", "created": int(time.time()), "owned_by": "wattgate-sim"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(_: Request) -> Response:
        return PlainTextResponse(render_metrics(engine), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
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
        ],
        lifespan=lifespan,
    )


def render_metrics(engine: SimEngine) -> str:
    """vLLM-style Prometheus text: vLLM's names and ``model_name`` label, plus modelled wattgate_sim_* gauges."""
    m = engine.model
    label = f'model_name="{engine.settings.model}"'
    now = engine.now_s()
    rows = [
        ("vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.", m.num_running),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", m.num_waiting),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", m.prompt_tokens_total),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            m.generation_tokens_total,
        ),
        ("vllm:request_success_total", "counter", "Count of successfully processed requests.", m.finished_total),
        (
            "wattgate_sim_load_rps",
            "gauge",
            "Modelled arrival rate over the load window (req/simulated s).",
            m.load_rps(now),
        ),
        (
            "wattgate_sim_sm_clock_mhz",
            "gauge",
            "SM clock the instance runs at (slowest of its GPUs).",
            engine.clock_mhz,
        ),
        ("wattgate_sim_power_watts", "gauge", "Modelled instance power (source=modelled).", engine.power_w),
        ("wattgate_sim_speed", "gauge", "Time compression: simulated seconds per wall second.", engine.settings.speed),
    ]
    lines = []
    for name, kind, doc, value in rows:
        family = name.removesuffix("_total") if kind == "counter" else name
        lines += [f"# HELP {family} {doc}", f"# TYPE {family} {kind}", f"{name}{{{label}}} {float(value)!r}"]
    return "\n".join(lines) + "\n"
