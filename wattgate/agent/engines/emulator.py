"""``wattgate sim-backend``: an OpenAI-compatible server that behaves like one vLLM instance (the serving model).

An ``Emulator`` runs one engine of the serving model (``wattgate.servingmodel``: continuous batching,
chunked prefill, KV cache with preemption, step times from measured kernels at the locked SM clock)
in simulated time paced to the wall clock: simulated seconds = wall seconds since start x ``speed``.

- **Time.** A request enters the engine at the simulated time it arrives and joins the first step
  that starts after it. A token leaves ``request_latency_s`` (the calibrated time outside the engine:
  HTTP, tokenization, detokenization) after the step that produced it ends, never earlier in wall
  time; so the TTFT a client times (x speed) is the TTFT the engine reports, plus the loop's lag.
  The driver commits the engine only up to ``now - request_latency_s`` and sleeps until the next
  step's tokens are due; streamed requests are handed their new tokens at each wake (coalesced),
  non-streamed ones only their end.
- **Clock.** The SM clock is read from the instance's simulated GPUs (the slowest gates a TP group)
  every ``CLOCK_POLL_S``; a new clock applies from the first engine step that starts after the read.
- **Power.** The engine's modelled energy is written to the GPUs as power, split evenly, every
  ``POWER_WRITE_S``: the power written is what brings their energy counters (which integrate over
  wall seconds) to the engine's committed energy / speed by the next write, so over a run the GPUs
  count exactly the modelled energy, one write late. The GPUs are files on a shared state
  directory, so their I/O runs in a worker thread, and writes are few.
- **Reports.** Every duration is in simulated seconds and modelled, never measured: the
  ``wattgate_sim`` object of each response and /metrics (``emulator_metrics``).

- **Sleep mode** (``EmulatorSettings.sleep_mode``, ``sim-backend --enable-sleep-mode``): vLLM's level-1 sleep
  as the serving model's cluster has it. ``sleep()`` holds new requests; the engine is asleep once nothing
  runs (vLLM's ``mode=wait``; its default ``abort`` would cut what runs, which a drained instance does not
  have). Asleep, the engine idles: its GPUs draw its idle power at the clock they are locked at (the agent
  locks the lowest), an upper estimate, as in ``servingmodel.cluster``. ``wake_up()`` brings it back after
  ``wake_s`` simulated seconds (``Lifecycle.wake_s``: the weights copied back over the host link plus 1 s,
  ~4 s for a 70B model on TP2, against ~95 s for a cold start; modelled), then releases the held requests.

The HTTP side (OpenAI endpoints, disconnects, the sleep endpoints) is ``emulator_app``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wattgate.agent.engines.emulator_metrics import EmulatorMetrics, Snapshot
from wattgate.agent.engines.emulator_requests import ParsedRequest, SimRequestError
from wattgate.agent.gpu.base import GpuError
from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.profiles.classes import ClassEdges
from wattgate.servingmodel.calibration import DEFAULT_ARCH, DEFAULT_ENGINE, ServingModel
from wattgate.servingmodel.cluster import Lifecycle
from wattgate.servingmodel.engine import Finished, Phase
from wattgate.servingmodel.errors import ServingModelError

log = logging.getLogger(__name__)
CLOCK_POLL_S = 0.1  # wall seconds between reads of the GPUs' locked clock
POWER_WRITE_S = 0.5  # wall seconds between power writes to the GPUs (their counters integrate in between)
POWER_VALID_S = 5.0  # wall seconds a power record holds if this process dies without writing idle
MAX_SLEEP_S = 1.0  # the driver's longest sleep: requests, finishes and the GPU task wake it earlier
MIN_SLEEP_S = 0.0005
_ACTIVE = (Phase.WAITING, Phase.PREFILL, Phase.DECODE)


@dataclass(frozen=True)
class EmulatorSettings:
    model: str  # the name clients send
    tp: int
    arch: str = DEFAULT_ARCH
    engine: str = DEFAULT_ENGINE
    speed: float = 1.0
    max_num_seqs: int | None = None  # None: the engine calibration's
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    load_window_s: float = 30.0
    default_output_tokens: int = 64
    edges: ClassEdges = field(default_factory=ClassEdges)
    sleep_mode: bool = False  # serve /sleep, /wake_up and /is_sleeping (vLLM's --enable-sleep-mode + dev mode)

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


@dataclass(eq=False)
class Waiter:
    """One response waiting on the engine: how many tokens it may send now, and its end."""

    req: ParsedRequest
    load_rps: float
    clock_mhz: int
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    visible: int = 0
    finished: Finished | None = None


@dataclass(frozen=True)
class _Meter:
    """The last power write: when, the engine's committed time and energy then, the power written (all
    GPUs), and the energy the GPUs had counted by then since the first write (wall-time J)."""

    wall_s: float
    engine_s: float
    engine_j: float
    written_w: float
    counted_j: float
    start_j: float  # the engine's energy at the first write


class Emulator:
    """Drives one serving-model engine in (compressed) real time and hands each request its tokens."""

    def __init__(
        self,
        model: ServingModel,
        settings: EmulatorSettings,
        gpus: Sequence[SimulatedGpu],
        *,
        wall_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(gpus) != settings.tp:
            raise ServingModelError(f"TP{settings.tp} needs {settings.tp} GPUs, got {len(gpus)}")
        self.settings, self.gpus, self._wall_s = settings, tuple(gpus), wall_s
        self._clock_failing = False
        self.clock_mhz = self._read_clock(default=model.max_clock_mhz)
        self.engine = model.engine(settings.tp, clock_mhz=self.clock_mhz, **settings.overrides())
        self.egress_s = model.engine_calibration.overheads.request_s  # latency outside the engine
        self.label = f"{self.engine.cost.arch.name} TP{settings.tp} ({settings.engine})"
        self.metrics = EmulatorMetrics(settings.model)
        self._t0 = wall_s()
        self._waiters: dict[str, Waiter] = {}
        self._streams: dict[str, Waiter] = {}  # the streamed ones: handed every token
        self._arrivals: list[float] = []
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._meter: _Meter | None = None
        self.power_w = self.engine.power.idle_gpu_w(self.clock_mhz) * settings.tp
        self._ended = {"stop": 0, "length": 0, "abort": 0}
        self._prompt_done = self._generated_done = 0  # tokens of requests no longer in the engine
        self.gpu_errors = 0
        # sleep mode: asleep from when nothing runs after sleep(); awake ``wake_s`` after wake_up() (modelled)
        self.wake_s = Lifecycle().wake_s(model.arch.weights_bytes(), settings.tp)
        self._sleep_asked = False  # sleep() called, wake_up() not yet
        self._awake_at_s: float | None = None  # simulated time a wake-up in progress completes
        self._awake = asyncio.Event()
        self._awake.set()

    def now_s(self) -> float:
        return (self._wall_s() - self._t0) * self.settings.speed

    def load_rps(self, at_s: float) -> float:
        """Arrivals over the last load window (req per simulated second)."""
        w = self.settings.load_window_s
        return (bisect.bisect_right(self._arrivals, at_s) - bisect.bisect_right(self._arrivals, at_s - w)) / w

    # -- sleep mode --------------------------------------------------------------------------
    def sleep(self) -> None:
        """Hold new requests; the engine is asleep once nothing runs."""
        self._sleep_asked, self._awake_at_s = True, None
        self._awake.clear()

    def wake_up(self) -> None:
        """Start a wake-up (``wake_s`` simulated seconds); nothing to do when awake or already waking."""
        if self._sleep_asked and self._awake_at_s is None:
            self._awake_at_s = self.now_s() + self.wake_s
            self._wake.set()  # the driver times the end of the wake-up

    def is_sleeping(self) -> bool:
        """Asleep or waking (vLLM's ``/is_sleeping`` says true until the wake-up is done)."""
        self._check_awake(self.now_s())
        return self._sleep_asked and (self._awake_at_s is not None or self.engine.idle)

    async def until_awake(self) -> None:
        """Return once the engine takes requests (at once when it never slept)."""
        await self._awake.wait()

    def _check_awake(self, now: float) -> None:
        if self._awake_at_s is not None and now >= self._awake_at_s:
            self._sleep_asked, self._awake_at_s = False, None
            self._awake.set()

    # -- the driver ------------------------------------------------------------------------
    def step(self) -> float:
        """Commit the engine up to what is visible now, hand out tokens; returns wall seconds to the next wake."""
        now = self.now_s()
        self._check_awake(now)
        engine = self.engine
        engine.advance(max(now - self.egress_s, engine.time_s))
        for f in engine.pop_finished():
            self._prompt_done += f.prompt
            self._generated_done += f.output
            self.metrics.observe(f.ttft_s, f.tpot_s, f.finish_s - f.arrival_s + self.egress_s, f.queue_s)
            w = self._waiters.get(f.id)
            if w is not None:
                self._ended[w.req.finish_reason] += 1
                w.finished, w.visible = f, f.output
                w.changed.set()
        for rid, w in self._streams.items():
            r = engine.get(rid)
            if w.finished is None and r is not None and r.first_token_s is not None:
                made = engine.generated(r)
                if made > w.visible:
                    w.visible = made
                    w.changed.set()
        cut = bisect.bisect_right(self._arrivals, now - self.settings.load_window_s)
        if cut > 1024:
            del self._arrivals[:cut]
        nxt = engine.next_event_s()
        delay = MAX_SLEEP_S if nxt is None else (nxt + self.egress_s - now) / self.settings.speed
        if self._awake_at_s is not None:
            delay = min(delay, (self._awake_at_s - now) / self.settings.speed)
        return delay

    async def run(self) -> None:
        """The driver loop (sleeps until the next step's tokens are due, or a request arrives or leaves)
        and the GPU task; on the way out the GPUs go back to idle."""
        gpu_task = asyncio.create_task(self._gpu_loop())
        try:
            while True:
                if gpu_task.done():
                    gpu_task.result()  # the GPU task may only stop with an error: raise it here
                delay = min(max(self.step(), MIN_SLEEP_S), MAX_SLEEP_S)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            gpu_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gpu_task
            for gpu in self.gpus:
                with contextlib.suppress(GpuError):
                    gpu.set_idle()

    # -- the GPUs: clock in, energy out ----------------------------------------------------
    async def _gpu_loop(self) -> None:
        """The GPU task: ``sync_gpus`` every ``CLOCK_POLL_S``, its file I/O in a worker thread, since a busy
        disk takes tens of milliseconds per write and the engine's clock must not stall for it."""
        while True:
            self.step()  # the energy written is the committed energy: commit up to now first
            plan = self._gpu_plan()
            io = asyncio.ensure_future(asyncio.to_thread(self._gpu_io, plan))
            try:
                clock, written_at = await asyncio.shield(io)
            except asyncio.CancelledError:
                await io  # let the write land before run() sets the GPUs idle
                raise
            self._gpus_done(plan, clock, written_at)
            await asyncio.sleep(CLOCK_POLL_S)

    def sync_gpus(self) -> None:
        """One round of the GPU task, in this thread: read the clock; write the power when it is due."""
        plan = self._gpu_plan()
        self._gpus_done(plan, *self._gpu_io(plan))

    def _gpu_plan(self) -> tuple[float, float, float] | None:
        """When a write is due: (the power to write for all GPUs, the engine's committed time and energy).
        The power is what brings the GPUs' counters to the engine's energy / speed by the next write."""
        t, e, m = self.engine.time_s, self.engine.totals.energy_j, self._meter
        if m is None:
            return self.power_w, t, e
        since = self._wall_s() - m.wall_s
        if since < POWER_WRITE_S:
            return None
        owed = (e - m.start_j) / self.settings.speed - m.counted_j - m.written_w * since
        return max(owed / since, 0.0), t, e  # the next interval will be about as long as the last

    def _gpu_io(self, plan: tuple[float, float, float] | None) -> tuple[int, float]:
        """Blocking file I/O: the clock (the slowest GPU's), and the power if due; returns the clock and
        the wall time of the write."""
        clock = self._read_clock(self.clock_mhz)
        written_at = self._wall_s()
        if plan is None:
            return clock, written_at
        for gpu in self.gpus:
            try:
                gpu.set_power_w(plan[0] / len(self.gpus), valid_for_s=POWER_VALID_S)
            except GpuError as exc:
                self.gpu_errors += 1
                log.warning("cannot write the power of simulated GPU %s: %s", gpu.index, exc)
        return clock, written_at

    def _gpus_done(self, plan: tuple[float, float, float] | None, clock: int, written_at: float) -> None:
        m = self._meter
        if plan is not None:
            power_w, t, e = plan
            if m is None:
                self._meter = _Meter(written_at, t, e, power_w, 0.0, e)
            else:
                if t > m.engine_s:  # else a long step is still in flight: keep the last figure
                    self.power_w = (e - m.engine_j) / (t - m.engine_s)
                counted = m.counted_j + m.written_w * (written_at - m.wall_s)
                self._meter = _Meter(written_at, t, e, power_w, counted, m.start_j)
        if clock != self.clock_mhz:  # from the first step that starts after the read
            self.clock_mhz = clock
            self.engine.set_clock(clock, max(self.now_s(), self.engine.time_s))

    def _read_clock(self, default: int) -> int:
        try:
            clock = min(g.sm_clock_mhz() for g in self.gpus)
        except GpuError as exc:
            if not self._clock_failing:  # log the change, not every poll
                log.warning("cannot read the simulated GPU clock, keeping %s MHz: %s", default, exc)
            self._clock_failing = True
            return default
        if self._clock_failing:
            log.warning("simulated GPU clock readable again: %s MHz", clock)
        self._clock_failing = False
        return clock

    # -- requests --------------------------------------------------------------------------
    def submit(self, req: ParsedRequest) -> tuple[str, Waiter]:
        prefix = "chatcmpl" if req.endpoint == "chat" else "cmpl"
        rid = f"{prefix}-sim{next(self._ids)}"
        now = self.now_s()
        try:
            self.engine.submit(rid, req.input_tokens, req.output_tokens, max(now, self.engine.time_s))
        except ServingModelError as exc:
            raise SimRequestError(str(exc)) from exc
        self._arrivals.append(now)
        w = Waiter(req, self.load_rps(now), self.clock_mhz)
        self._waiters[rid] = w
        if req.stream:
            self._streams[rid] = w
        self._wake.set()
        return rid, w

    def finish(self, rid: str) -> None:
        """The response is over (complete, or the client went away): forget the request, aborting it if it runs."""
        self._waiters.pop(rid, None)
        self._streams.pop(rid, None)
        r = self.engine.get(rid)
        if r is not None and r.phase in _ACTIVE:
            self._generated_done += self.engine.generated(r)
            self._prompt_done += r.prompt if r.first_token_s is not None else 0
            self._ended["abort"] += 1
            self.engine.cancel(rid)
            self._wake.set()
        self.engine.forget(rid)

    def sim_fields(self, rid: str) -> dict[str, Any]:
        """The ``wattgate_sim`` object of a finished request's response (modelled, simulated seconds)."""
        w = self._waiters[rid]
        f = w.finished
        return {
            "timing": "modelled",
            "time_unit": "simulated_s",
            "request_type": w.req.rtype.name,
            "input_tokens": w.req.input_tokens,
            "output_tokens": w.visible,
            "ttft_s": f.ttft_s if f else None,
            "tbt_mean_s": f.tpot_s if f else None,
            "queue_s": f.queue_s if f else None,
            "arrival_s": f.arrival_s if f else None,  # when the engine received it, since the emulator started
            "preemptions": f.preemptions if f else 0,
            "load_rps": w.load_rps,
            "sm_clock_mhz": w.clock_mhz,
            "engine": self.label,
        }

    def snapshot(self) -> Snapshot:
        e = self.engine
        live = [r for r in e.requests() if r.phase in _ACTIVE]
        return Snapshot(
            running=e.running,
            waiting=e.waiting,
            kv_cache_usage=e.kv_used_tokens() / e.capacity_tokens,
            prompt_tokens=self._prompt_done + sum(r.prompt for r in live if r.first_token_s is not None),
            generation_tokens=self._generated_done + sum(e.generated(r) for r in live),
            preemptions=e.totals.preemptions,
            load_rps=self.load_rps(self.now_s()),
            sm_clock_mhz=self.clock_mhz,
            power_w=self.power_w,
            speed=self.settings.speed,
            finished=dict(self._ended),
            sleep_state="weights_offloaded" if self.is_sleeping() else "awake",
        )
