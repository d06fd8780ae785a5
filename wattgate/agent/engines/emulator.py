"""``wattgate sim-backend``: an OpenAI-compatible server behaving like one vLLM instance, driven by the serving model.

An ``Emulator`` runs one engine of the serving model (``wattgate.servingmodel``: continuous batching,
chunked prefill, KV cache, step times from measured kernels at the locked SM clock) in simulated
time paced to the wall clock: simulated seconds = wall seconds since start x ``speed``. A request
joins the engine when it arrives; its tokens leave when the engine step that produced them ends,
plus the calibrated latency outside the engine (HTTP, tokenization, detokenization), never earlier
in wall time. Every duration it reports is in simulated seconds and modelled, never measured: the
``wattgate_sim`` object of each response (``ttft_s``, ``tbt_mean_s``, ``queue_s``, ``load_rps``,
``sm_clock_mhz``, ``request_type``, ``preemptions``) and /metrics. The SM clock is read from the
instance's simulated GPUs (the slowest gates a TP group) and applies from the next engine step; the
modelled energy of the instance is written to them as power, split evenly.
"""

from __future__ import annotations

import asyncio
import bisect
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

from wattgate.agent.engines.emulator_requests import (
    ChunkWriter,
    ParsedRequest,
    SimRequestError,
    full_response,
    parse_request,
)
from wattgate.agent.gpu.base import GpuError
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.profiles.classes import ClassEdges
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.engine import Finished, Phase
from wattgate.servingmodel.errors import ServingModelError

log = logging.getLogger(__name__)
CLOCK_POLL_S = 0.05  # wall seconds between reads of the GPUs' locked clock
POWER_PUBLISH_S = 0.1  # wall seconds between power updates written to the GPUs
MAX_SLEEP_S = 0.05
POWER_VALID_S = 5.0  # wall seconds a power record holds if this process dies without writing idle


@dataclass(frozen=True)
class EmulatorSettings:
    model: str  # the name clients send
    tp: int
    arch: str = "llama-3.1-70b"
    engine: str = "vllm-v1"
    speed: float = 1.0
    max_num_seqs: int | None = None  # None: the engine calibration's
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    load_window_s: float = 30.0
    default_output_tokens: int = 64
    edges: ClassEdges = field(default_factory=ClassEdges)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ServingModelError(f"--speed must be > 0, got {self.speed}")
        if self.default_output_tokens < 1:
            raise ServingModelError("the default output length must be >= 1 token")
        if not self.load_window_s > 0:
            raise ServingModelError(f"the load window must be > 0 s, got {self.load_window_s}")

    def overrides(self) -> dict[str, Any]:
        names = ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class _Stream:
    queue: asyncio.Queue[int]  # tokens visible so far (a count); 0 is never put
    every_token: bool
    sent: int = 0
    load_rps: float = 0.0
    clock_mhz: int = 0
    rtype: str = ""
    input_tokens: int = 0


class Emulator:
    """Drives one serving-model engine in (compressed) real time and hands each request its tokens."""

    def __init__(self, model: ServingModel, settings: EmulatorSettings, gpus: Sequence[SimulatedGpu]) -> None:
        if len(gpus) != settings.tp:
            raise ServingModelError(f"TP{settings.tp} needs {settings.tp} GPUs, got {len(gpus)}")
        self.settings = settings
        self.gpus = tuple(gpus)
        self._clock_failing = False
        self._clock_mhz = self._read_clock(default=model.max_clock_mhz)
        self.engine = model.engine(settings.tp, clock_mhz=self._clock_mhz, **settings.overrides())
        self.egress_s = model.engine_calibration.overheads.request_s  # latency outside the engine
        self._t0 = time.monotonic()
        self._streams: dict[str, _Stream] = {}
        self._finished: dict[str, Finished] = {}
        self._arrivals: list[float] = []
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._clock_read_at = 0.0
        self._power_at = 0.0
        self._energy_at = (0.0, 0.0)  # (simulated s, J) of the last power update
        self.power_w = self.engine.power.idle_gpu_w(self._clock_mhz) * settings.tp
        self.finished_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.gpu_errors = 0

    # -- time and GPUs ---------------------------------------------------------------------
    def now_s(self) -> float:
        return (time.monotonic() - self._t0) * self.settings.speed

    @property
    def clock_mhz(self) -> int:
        return self._clock_mhz

    def load_rps(self, at_s: float) -> float:
        """Arrivals over the last load window (req per simulated second)."""
        w = self.settings.load_window_s
        return (bisect.bisect_right(self._arrivals, at_s) - bisect.bisect_right(self._arrivals, at_s - w)) / w

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
            clock = self._read_clock(self._clock_mhz)
            if clock != self._clock_mhz:
                self._clock_mhz = clock
                self.engine.set_clock(clock, max(now_s, self.engine.time_s))
            self._clock_read_at = wall
        if wall - self._power_at >= POWER_PUBLISH_S:
            self._power_at = wall
            t = max(now_s, self.engine.time_s)
            energy = self.engine.energy_j_at(t)
            t0, e0 = self._energy_at
            if t > t0:
                self.power_w = (energy - e0) / (t - t0)
            self._energy_at = (t, energy)
            self._publish(self.power_w)
        cut = bisect.bisect_right(self._arrivals, now_s - 2 * self.settings.load_window_s)
        if cut > 1024:
            del self._arrivals[:cut]

    def _publish(self, power_w: float) -> None:
        for gpu in self.gpus:
            try:
                gpu.set_power_w(power_w / len(self.gpus), valid_for_s=POWER_VALID_S)
            except GpuError as exc:
                self.gpu_errors += 1
                log.warning("cannot write the power of simulated GPU %s: %s", gpu.index, exc)

    # -- the driver loop -------------------------------------------------------------------
    def _engine_horizon(self, now_s: float) -> float:
        """Engine time whose tokens are visible now: they leave ``egress_s`` after their step ends."""
        return now_s - self.egress_s

    def step(self) -> float:
        """Advance the engine to now, hand out visible tokens; returns wall seconds until the next event."""
        now = self.now_s()
        self._refresh(now)
        self.engine.advance(max(self._engine_horizon(now), self.engine.time_s))
        for f in self.engine.pop_finished():
            self._finished[f.id] = f
            self.finished_total += 1
        for rid, st in self._streams.items():
            r = self.engine.get(rid)
            if r is None or r.first_token_s is None:
                continue
            made = self.engine.generated(r)
            if made > st.sent:
                self.generation_tokens_total += made - st.sent
                st.sent = made
                st.queue.put_nowait(made)
        nxt = self.engine.next_event_s()
        if nxt is None:
            return MAX_SLEEP_S
        return (nxt + self.egress_s - self.now_s()) / self.settings.speed

    async def run(self) -> None:
        try:
            while True:
                delay = self.step()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(MAX_SLEEP_S, max(delay, 0.0005))):
                        await self._wake.wait()
        finally:
            for gpu in self.gpus:
                with contextlib.suppress(GpuError):
                    gpu.set_idle()

    # -- requests --------------------------------------------------------------------------
    def submit(self, req: ParsedRequest) -> tuple[str, asyncio.Queue[int]]:
        prefix = "chatcmpl" if req.endpoint == "chat" else "cmpl"
        rid = f"{prefix}-sim{next(self._ids)}"
        now = self.now_s()
        at = max(self._engine_horizon(now), self.engine.time_s)
        self.engine.advance(at)
        try:
            self.engine.submit(rid, req.input_tokens, req.output_tokens, at)
        except ServingModelError as exc:
            raise SimRequestError(str(exc)) from exc
        self._arrivals.append(now)
        queue: asyncio.Queue[int] = asyncio.Queue()
        self._streams[rid] = _Stream(
            queue,
            req.stream,
            load_rps=self.load_rps(now),
            clock_mhz=self._clock_mhz,
            rtype=req.rtype.name,
            input_tokens=req.input_tokens,
        )
        self.prompt_tokens_total += req.input_tokens
        self._wake.set()
        return rid, queue

    def finish(self, rid: str) -> None:
        """The response is over (complete, or the client went away): forget the request, freeing its slot."""
        self._streams.pop(rid, None)
        self._finished.pop(rid, None)
        r = self.engine.get(rid)
        if r is not None and r.phase not in (Phase.DONE, Phase.CANCELLED):
            self.engine.cancel(rid)
            self._wake.set()
        self.engine.forget(rid)

    def sim_fields(self, rid: str) -> dict[str, Any]:
        st = self._streams.get(rid)
        f = self._finished.get(rid)
        r = self.engine.get(rid)
        return {
            "timing": "modelled",
            "time_unit": "simulated_s",
            "request_type": st.rtype if st else None,
            "input_tokens": st.input_tokens if st else None,
            "output_tokens": st.sent if st else None,
            "queue_s": f.queue_s if f else None,
            "ttft_s": f.ttft_s if f else None,
            "tbt_mean_s": f.tpot_s if f else None,
            "load_rps": st.load_rps if st else None,
            "sm_clock_mhz": st.clock_mhz if st else None,
            "preemptions": r.preemptions if r else 0,
            "engine": f"{self.engine.cost.arch.name} TP{self.settings.tp} ({self.settings.engine})",
        }


def _error(exc: SimRequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _stream(emu: Emulator, rid: str, req: ParsedRequest, queue: asyncio.Queue[int]) -> AsyncIterator[bytes]:
    writer = ChunkWriter(rid, req)
    sent = 0
    try:
        while sent < req.output_tokens:
            made = await queue.get()
            while not queue.empty():  # coalesce tokens that are already due
                made = queue.get_nowait()
            yield b"".join(writer.token(i) for i in range(sent, made))
            sent = made
        yield writer.finish(sent, emu.sim_fields(rid))  # finished in the step of its last token
    finally:
        emu.finish(rid)


async def _finished_or_disconnected(request: Request, queue: asyncio.Queue[int], want: int) -> bool:
    """Wait for the last token (True) or for the client to go away (False), as vLLM aborts such requests."""

    async def last_token() -> None:
        while await queue.get() < want:
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


def build_app(emu: Emulator) -> Starlette:
    settings = emu.settings

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
            rid, queue = emu.submit(req)
        except SimRequestError as exc:
            return _error(exc)
        if req.stream:
            return StreamingResponse(_stream(emu, rid, req, queue), media_type="text/event-stream")
        try:
            if not await _finished_or_disconnected(request, queue, req.output_tokens):
                return Response(status_code=499)  # nobody is listening; the slot is freed below
            return JSONResponse(full_response(rid, req, req.output_tokens, emu.sim_fields(rid)))
        finally:
            emu.finish(rid)

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
        return PlainTextResponse(render_metrics(emu), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(emu.run())
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


def render_metrics(emu: Emulator) -> str:
    """vLLM-style Prometheus text: vLLM's names and ``model_name`` label, plus modelled wattgate_sim_* gauges."""
    e = emu.engine
    label = f'model_name="{emu.settings.model}"'
    now = emu.now_s()
    rows = [
        ("vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.", e.running),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", e.waiting),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", emu.prompt_tokens_total),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            emu.generation_tokens_total,
        ),
        ("vllm:request_success_total", "counter", "Count of successfully processed requests.", emu.finished_total),
        (
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            e.totals.preemptions,
        ),
        (
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            e.kv_used_tokens() / e.capacity_tokens,
        ),
        (
            "wattgate_sim_load_rps",
            "gauge",
            "Modelled arrival rate over the load window (req/simulated s).",
            emu.load_rps(now),
        ),
        ("wattgate_sim_sm_clock_mhz", "gauge", "SM clock the instance runs at (slowest of its GPUs).", emu.clock_mhz),
        ("wattgate_sim_power_watts", "gauge", "Modelled instance power (source=modelled).", emu.power_w),
        ("wattgate_sim_speed", "gauge", "Time compression: simulated seconds per wall second.", emu.settings.speed),
    ]
    lines = []
    for name, kind, doc, value in rows:
        family = name.removesuffix("_total") if kind == "counter" else name
        lines += [f"# HELP {family} {doc}", f"# TYPE {family} {kind}", f"{name}{{{label}}} {float(value)!r}"]
    return "\n".join(lines) + "\n"
