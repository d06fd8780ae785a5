"""An event-driven model of one vLLM-style engine instance: scheduler, KV cache, steps, clock and energy.

The engine runs *steps*. At the start of each step its scheduler decides which tokens run, from the
state at that moment; the step then takes the time ``StepCost`` gives at the SM clock in force when
it starts, and its tokens come out when it ends. Two schedulers:

- ``v1`` (vLLM V1, the default since vLLM 0.8): running requests first (each decode needs one token,
  a partial prefill its next chunk), then waiting requests FIFO while the per-step token budget
  (``max_num_batched_tokens``), the sequence limit (``max_num_seqs``) and the KV cache allow; long
  prompts are split into chunks (chunked prefill) and mixed with decodes in the same step.
- ``v0`` (vLLM V0's default without chunked prefill): a step either prefills whole prompts (waiting
  requests FIFO within the budget) or decodes every running request, prefills first.

**KV cache**: ``capacity_tokens`` from GPU memory (``gpu_memory_bytes x gpu_memory_utilization`` per
GPU, less the weights' share and ``reserved_bytes_per_gpu`` for activations, CUDA graphs and NCCL
buffers) over the KV bytes per token; every running request wastes half a block on average. When
the running requests' next tokens do not fit, the newest running request is *preempted* (vLLM's
recompute mode: its cache is freed and it re-enters the waiting queue at the front; when readmitted
it prefills its prompt and the tokens generated so far again).

**Time**: ``advance(until)`` commits every step that ends by ``until`` (and idles where nothing can
run); a step in flight at ``until`` is planned only when it is committed, so a request submitted at
``t`` joins the first step that *starts* at or after ``t``. Runs of identical decode-only steps
(nothing arrives, nothing finishes, the cache does not fill) are committed at once in closed form:
such runs are most of an engine's steps, and this keeps an hour of a large cluster fast.

**Outputs** per request (``Finished``): the first token's time (TTFT, plus the calibrated latency
outside the engine), time per output token after the first (TPOT, what vLLM's benchmark reports
and what the TBT target is judged on), queueing and preemptions. Energy: every step's compute-bound,
memory-bound and overhead seconds at the clock's power, and idle power between steps (``PowerModel``).
Everything here is modelled.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from wattgate.servingmodel.errors import ServingModelError
from wattgate.servingmodel.power import PowerAt, PowerModel
from wattgate.servingmodel.steps import ClockFactors, ClockLaw, StepCost, StepTime

GIB = 2**30
# What an H100 SXM 80GB reports as its memory (nvidia-smi 81,559 MiB; torch.cuda.mem_get_info's total), the
# figure vLLM multiplies by gpu_memory_utilization: 79.6 GiB, not 80.
H100_MEMORY_BYTES = 81559 * 2**20


class Scheduler(enum.StrEnum):
    V1 = "v1"
    V0 = "v0"


@dataclass(frozen=True)
class EngineConfig:
    """The engine's own settings (vLLM's names); defaults are ``vllm serve`` V1 on an 80 GB H100."""

    tp: int = 8
    scheduler: Scheduler = Scheduler.V1
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    gpu_memory_bytes: float = H100_MEMORY_BYTES
    reserved_bytes_per_gpu: float = 3 * GIB
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.tp not in (1, 2, 4, 8):
            raise ServingModelError(f"TP must be 1, 2, 4 or 8, got {self.tp}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ServingModelError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ServingModelError("gpu_memory_utilization must be in (0, 1]")


class Phase(enum.Enum):
    WAITING = 0
    PREFILL = 1
    DECODE = 2
    DONE = 3
    CANCELLED = 4


@dataclass(eq=False)
class Request:
    """One request's progress inside the engine (times in engine seconds)."""

    id: str
    arrival_s: float
    prompt: int
    output: int
    phase: Phase = Phase.WAITING
    target: int = 0  # tokens to prefill: the prompt, or prompt + generated after a preemption
    computed: int = 0
    base: int = 0  # tokens generated before the current decode phase started (the first one included)
    g_join: int = 0  # the engine's decode-step counter when this decode phase started
    order: int = 0  # admission order: the newest running request is preempted first
    epoch: int = 0  # bumped on preemption: stale completion entries are skipped
    admitted_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0


class Finished(NamedTuple):
    """A finished request, as the engine saw it (modelled). A named tuple: one per request, made fast."""

    id: str
    arrival_s: float
    prompt: int
    output: int
    ttft_s: float
    tpot_s: float | None  # mean time per output token after the first; None for one-token outputs
    finish_s: float
    queue_s: float
    preemptions: int


@dataclass
class Totals:
    """Cumulative seconds and energy of the engine (all its GPUs), committed steps and idle time."""

    compute_s: float = 0.0
    memory_s: float = 0.0
    overhead_s: float = 0.0
    idle_s: float = 0.0
    comm_s: float = 0.0
    latency_s: float = 0.0
    energy_j: float = 0.0
    steps: int = 0
    preemptions: int = 0


@dataclass
class _Decision:
    start_s: float
    clock_mhz: int
    decodes: int
    prefill: list[tuple[Request, int, int]] = field(default_factory=list)  # (request, cached, chunk)
    admit: list[Request] = field(default_factory=list)
    preempt: list[Request] = field(default_factory=list)
    time: StepTime | None = None


class Engine:
    """One engine instance in simulated time (see the module docstring)."""

    def __init__(
        self,
        cost: StepCost,
        clock_law: ClockLaw,
        power: PowerModel,
        config: EngineConfig,
        *,
        clock_mhz: int = 1980,
        request_latency_s: float = 0.0,
        start_s: float = 0.0,
    ) -> None:
        if cost.tp != config.tp:
            raise ServingModelError(f"step costs are for TP{cost.tp}, the engine is TP{config.tp}")
        self.cost, self.law, self.power, self.config = cost, clock_law, power, config
        self.request_latency_s = request_latency_s
        self.capacity_tokens = kv_capacity_tokens(cost, config)
        self.max_request_tokens = min(self.capacity_tokens, cost.arch.context_tokens)
        if self.capacity_tokens < config.block_size:
            raise ServingModelError(
                f"{cost.arch.name} does not fit TP{config.tp} with {config.gpu_memory_bytes / GIB:.1f} GiB per GPU"
            )
        self.time_s = start_s
        self.clock_mhz = clock_mhz
        self._clock_changes: list[tuple[float, int]] = []
        self._clock_factors: dict[int, ClockFactors] = {}
        self._power_factors: dict[int, PowerAt] = {}  # the power model's, per clock (``_account``)
        self.totals = Totals()
        self._g = 0  # decode steps so far
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._decoding: dict[str, Request] = {}
        self._s0 = 0  # sum over decoding requests of (target + 1 - g_join): their KV tokens = s0 + n * g
        self._prefill_kv = 0  # tokens cached by partial prefills
        self._finish: list[tuple[int, int, int, Request]] = []  # (decode step it finishes at, order, epoch, req)
        self._requests: dict[str, Request] = {}
        self._order = 0
        self._done: list[Finished] = []
        self._half_block = config.block_size // 2
        self._planned: _Decision | None = None  # the last step planned and not yet committed (``_schedule``)

    # -- requests ----------------------------------------------------------------------------
    def submit(self, request_id: str, prompt_tokens: int, output_tokens: int, at_s: float) -> None:
        """A request arrives at ``at_s`` (at or after the engine's committed time)."""
        if prompt_tokens < 1 or output_tokens < 1:
            raise ServingModelError("a request needs at least one prompt and one output token")
        if prompt_tokens + output_tokens > self.max_request_tokens:
            raise ServingModelError(
                f"a request of {prompt_tokens + output_tokens} tokens exceeds this instance's limit of "
                f"{self.max_request_tokens} (the model's context and the KV cache)"
            )
        if request_id in self._requests:
            raise ServingModelError(f"duplicate request id {request_id!r}")
        r = Request(request_id, at_s, prompt_tokens, output_tokens, target=prompt_tokens)
        self._requests[request_id] = r
        self._waiting.append(r)
        self._planned = None

    def cancel(self, request_id: str) -> None:
        """The client went away: free the request's slot and cache now."""
        r = self._requests.pop(request_id, None)
        if r is None or r.phase in (Phase.DONE, Phase.CANCELLED):
            return
        self._release(r)
        r.phase = Phase.CANCELLED
        self._planned = None

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def generated(self, r: Request) -> int:
        """Output tokens the request has produced by the committed time."""
        if r.phase is Phase.DECODE:
            return r.base + self._g - r.g_join
        if r.phase is Phase.DONE:
            return r.output
        return r.base

    def pop_finished(self) -> list[Finished]:
        done, self._done = self._done, []
        return done

    def forget(self, request_id: str) -> None:
        r = self._requests.get(request_id)
        if r is not None and r.phase in (Phase.DONE, Phase.CANCELLED):
            del self._requests[request_id]

    @property
    def running(self) -> int:
        return len(self._decoding) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._decoding and not self._prefilling and not self._waiting

    def oldest_waiting_s(self, now_s: float) -> float:
        """How long the longest-waiting request without its first token has waited (0.0 with none)."""
        arrivals = [r.arrival_s for r in self._prefilling if r.first_token_s is None]
        if self._waiting:
            arrivals += [r.arrival_s for r in self._waiting if r.first_token_s is None][:1]
        return max(now_s - min(arrivals), 0.0) if arrivals else 0.0

    def kv_used_tokens(self) -> int:
        n = len(self._decoding)
        return self._s0 + n * self._g + self._prefill_kv + self._half_block * (n + len(self._prefilling))

    # -- clock -------------------------------------------------------------------------------
    def set_clock(self, clock_mhz: int, at_s: float) -> None:
        """Lock a new SM clock from ``at_s`` on: the first step that starts at or after it runs at it."""
        self._planned = None
        if at_s <= self.time_s and not self._clock_changes:
            self.clock_mhz = clock_mhz
            return
        bisect.insort(self._clock_changes, (at_s, clock_mhz))

    def _factors(self, clock: int) -> ClockFactors:
        """The clock law's factors (compute, memory, latency) at ``clock`` times the engine's ``kernel_scale``,
        kept per clock: the hot path asks often."""
        f = self._clock_factors.get(clock)
        if f is None:
            f = self.law.factors(clock)
            k = self.cost.overheads.kernel_scale
            if k != 1.0:
                f = (f[0] * k, f[1] * k, f[2] * k)
            self._clock_factors[clock] = f
        return f

    def _clock_at(self, t: float) -> int:
        while self._clock_changes and self._clock_changes[0][0] <= t:
            self.clock_mhz = self._clock_changes.pop(0)[1]
        return self.clock_mhz

    # -- time --------------------------------------------------------------------------------
    def advance(self, until_s: float, *, stop_when_idle: bool = False) -> None:
        """Commit every step that ends by ``until_s``, idling where nothing can run (or, with
        ``stop_when_idle``, stopping as soon as no request is left)."""
        while self.time_s < until_s:
            s = self.time_s
            clock = self._clock_at(s) if self._clock_changes else self.clock_mhz
            if stop_when_idle and self.idle:
                return
            if not self._runnable(s):
                nxt = self._next_wake(s, until_s)
                self._idle(nxt - s, clock)
                self.time_s = nxt
                continue
            if self._pure_decode(s):
                ran = self._run_decodes(s, until_s, clock)
                if ran is _Run.STOP:
                    return
                if ran is _Run.RAN:
                    continue
            d = self._schedule(s, clock)
            if d.time is None:  # nothing fits even after preemption: wait for the next event
                nxt = self._next_wake(s, until_s)
                self._idle(nxt - s, clock)
                self.time_s = nxt
                continue
            if s + d.time.total_s > until_s:
                return
            self._apply(d)

    def next_event_s(self) -> float | None:
        """When the next step ends (or the next waiting request can start), without committing anything."""
        s = self.time_s
        if not self._runnable(s):
            return None if not self._waiting else self._waiting[0].arrival_s
        clock = self._peek_clock(s)
        if self._pure_decode(s):
            k = self._decode_limit(s, clock)
            if k >= 1:
                f = self._factors(clock)
                one = self.cost.decode_run(len(self._decoding), self._kv_read(), 1, f)
                return s + one.total_s
        d = self._schedule(s, clock, dry=True)
        return None if d.time is None else s + d.time.total_s

    def energy_j_at(self, t: float) -> float:
        """Energy of all the engine's GPUs up to ``t`` >= the committed time (idle or in-flight step at its power)."""
        extra = max(t - self.time_s, 0.0)
        if not extra:
            return self.totals.energy_j
        clock = self._peek_clock(self.time_s)
        gpus = self.config.tp
        if self._runnable(self.time_s):
            now = self._step_time(self.time_s, clock)
            if now is not None and now.total_s > 0:
                frac = min(extra / now.total_s, 1.0)
                return self.totals.energy_j + self.power.step_energy_j(now.scaled(frac), clock, gpus)
        return self.totals.energy_j + self.power.idle_gpu_w(clock) * gpus * extra

    def _step_time(self, s: float, clock: int) -> StepTime | None:
        """The time of the step that starts at ``s``, as ``_schedule`` plans it; a decode-only step of the V1
        scheduler (the usual case: it admits nobody and preempts nobody) without planning one."""
        n = len(self._decoding)
        if self.config.scheduler is Scheduler.V1 and self._pure_decode(s) and self._free_tokens() >= n:
            return self.cost.step(
                decodes=n, kv_tokens=self._kv_read(), prefill=(), sampled=n, factors=self._factors(clock)
            )
        return self._schedule(s, clock, dry=True).time

    # -- internals: state --------------------------------------------------------------------
    def _peek_clock(self, t: float) -> int:
        clock = self.clock_mhz
        for at, c in self._clock_changes:
            if at <= t:
                clock = c
        return clock

    def _runnable(self, s: float) -> bool:
        return bool(self._decoding or self._prefilling or (self._waiting and self._waiting[0].arrival_s <= s))

    def _next_wake(self, s: float, until_s: float) -> float:
        nxt = until_s
        if self._waiting and self._waiting[0].arrival_s > s:
            nxt = min(nxt, self._waiting[0].arrival_s)
        if self._clock_changes:
            nxt = min(nxt, max(self._clock_changes[0][0], s))
        return max(nxt, s) if nxt > s else until_s

    def _idle(self, dt: float, clock: int) -> None:
        if dt <= 0:
            return
        self.totals.idle_s += dt
        self.totals.energy_j += self.power.idle_gpu_w(clock) * self.config.tp * dt

    def _kv_read(self) -> int:
        return self._s0 + len(self._decoding) * self._g

    def _free_tokens(self) -> int:
        return self.capacity_tokens - self.kv_used_tokens()

    def _release(self, r: Request) -> None:
        if r.phase is Phase.DECODE:
            del self._decoding[r.id]
            self._s0 -= r.target + 1 - r.g_join
            r.epoch += 1
        elif r.phase is Phase.PREFILL:
            self._prefilling.remove(r)
            self._prefill_kv -= r.computed
        elif r.phase is Phase.WAITING:
            self._waiting.remove(r)

    # -- internals: decode runs --------------------------------------------------------------
    def _pure_decode(self, s: float) -> bool:
        """Only decodes can run: no partial prefill, and no waiting request that the scheduler could admit."""
        decoding = self._decoding
        if not decoding or self._prefilling:
            return False
        waiting = self._waiting
        if not waiting or waiting[0].arrival_s > s:
            return True
        w, n, cfg = waiting[0], len(decoding), self.config
        if n >= cfg.max_num_seqs:  # nothing prefills: the running requests are the decoding ones
            return True
        need = w.target if cfg.scheduler is Scheduler.V0 else min(w.target, cfg.max_num_batched_tokens - n)
        return need <= 0 or self._free_tokens() - n < need + self._half_block

    def _decode_cap(self, n: int) -> int:
        """Decode steps of ``n`` sequences before the next finish (stale heap entries dropped) and within the
        free KV cache."""
        fin = self._finish
        while fin and fin[0][2] != fin[0][3].epoch:
            heapq.heappop(fin)
        return min(fin[0][0] - self._g if fin else 1, self._free_tokens() // n)

    def _decode_limit(self, s: float, clock: int) -> int:
        n = len(self._decoding)
        k = self._decode_cap(n)
        f = self._factors(clock)
        for t in (self._waiting[0].arrival_s if self._waiting else None, self._next_clock_change()):
            if t is not None and t > s:  # stop at the first step that starts at or after t
                k = min(k, self.cost.decode_steps_within(n, self._kv_read(), t - s, f) + 1)
        return k

    def _next_clock_change(self) -> float | None:
        return self._clock_changes[0][0] if self._clock_changes else None

    def _run_decodes(self, s: float, until_s: float, clock: int) -> _Run:
        """Commit a run of decode-only steps in closed form, up to the next event and ``until_s``.

        The same run as ``_decode_limit`` then ``decode_steps_within(until_s - s)`` would give, but a bound is
        solved for only when the run reaches it (a run ends at a finish far more often than at an arrival,
        a clock change or the horizon): ``k`` steps fit a budget iff their closed-form time is within it."""
        n = len(self._decoding)
        k = self._decode_cap(n)
        if k < 1:
            return _Run.NO
        kv = self._kv_read()
        steps = self.cost.decode_steps(n, self._factors(clock))
        if until_s != math.inf and not steps.run_s(kv, 1) <= until_s - s:
            # the step in flight at the horizon (a run's time grows with its steps: no run of >= 1 step fits)
            return _Run.STOP
        for t in (self._waiting[0].arrival_s if self._waiting else None, self._next_clock_change()):
            # stop at the first step that starts at or after t: at most (steps that end by t) + 1
            if t is not None and t > s and k > 1 and not steps.run_s(kv, k - 1) <= t - s:
                k = steps.within(kv, t - s) + 1
        run = steps.run(kv, k)
        if until_s != math.inf and not run.total_s <= until_s - s:
            k = steps.within(kv, until_s - s)  # fewer than k
            if k < 1:
                return _Run.STOP  # the next step ends after until_s
            run = steps.run(kv, k)
        self._planned = None
        self._account(run, clock, k)
        self._g += k
        self.time_s = s + run.total_s
        self._finish_due()
        return _Run.RAN

    # -- internals: one scheduled step -------------------------------------------------------
    def _schedule(self, s: float, clock: int, dry: bool = False) -> _Decision:
        """The step that starts at ``s`` at ``clock``, as the scheduler plans it (``_plan``). Kept until the
        engine's state changes: a step in flight at a horizon is asked for again by ``energy_j_at`` and by the
        next ``advance``, which commits it (the same plan: the same state gives the same step)."""
        d = self._planned
        if d is None or d.start_s != s or d.clock_mhz != clock:
            d = self._planned = self._plan(s, clock)
        return d

    def _plan(self, s: float, clock: int) -> _Decision:
        cfg = self.config
        n = len(self._decoding)
        d = _Decision(s, clock, n, [], [], [])
        kv = self._kv_read()
        free = self._free_tokens()
        budget = cfg.max_num_batched_tokens
        if cfg.scheduler is Scheduler.V0:
            self._schedule_v0(d, free, budget)
        else:
            self._schedule_v1(d, free, budget)
        if d.decodes == 0 and not d.prefill:
            return d
        if d.preempt:
            kv -= sum(self._kv_of(r) for r in d.preempt if r.phase is Phase.DECODE)
        prefill = []
        completing = 0
        for r, cached, chunk in d.prefill:
            prefill.append((cached, chunk))
            if cached + chunk >= r.target:
                completing += 1
        d.time = self.cost.step(
            decodes=d.decodes,
            kv_tokens=kv,
            prefill=tuple(prefill),
            sampled=d.decodes + completing,
            factors=self._factors(clock),
        )
        return d

    def _kv_of(self, r: Request) -> int:
        return r.target + 1 + self._g - r.g_join

    def _victims(self, d: _Decision, free: int, need: int) -> int:
        """Preempt the newest running requests until ``need`` tokens fit; returns the new free count."""
        if free >= need:
            return free
        running = sorted([*self._decoding.values(), *self._prefilling], key=lambda r: r.order)
        while free < need and running:
            v = running.pop()
            d.preempt.append(v)
            if v.phase is Phase.DECODE:
                free += self._kv_of(v) + self._half_block
                d.decodes -= 1
                need -= 1
            else:
                free += v.computed + self._half_block
        return free

    def _schedule_v1(self, d: _Decision, free: int, budget: int) -> None:
        need = d.decodes
        budget -= d.decodes
        chunks = []
        for r in self._prefilling:
            c = min(r.target - r.computed, max(budget, 0))
            if c > 0:
                chunks.append((r, r.computed, c))
                budget -= c
                need += c
        free = self._victims(d, free, need)
        if d.preempt:
            gone = set(map(id, d.preempt))
            d.prefill = [c for c in chunks if id(c[0]) not in gone]
            return  # vLLM V1 admits nobody in a step that had to preempt
        d.prefill = chunks
        chunked = sum(c for _, _, c in chunks)
        free -= d.decodes + chunked
        budget = self.config.max_num_batched_tokens - d.decodes - chunked
        running = self.running
        for w in self._waiting:
            if w.arrival_s > d.start_s or budget <= 0 or running >= self.config.max_num_seqs:
                break
            c = min(w.target, budget)
            if free < c + self._half_block:
                break
            d.admit.append(w)
            d.prefill.append((w, 0, c))
            free -= c + self._half_block
            budget -= c
            running += 1

    def _schedule_v0(self, d: _Decision, free: int, budget: int) -> None:
        running = self.running
        watermark = int(0.01 * self.capacity_tokens)
        for w in self._waiting:
            if w.arrival_s > d.start_s or running >= self.config.max_num_seqs or w.target > budget:
                break
            if free - watermark < w.target + self._half_block:
                break
            d.admit.append(w)
            d.prefill.append((w, 0, w.target))
            free -= w.target + self._half_block
            budget -= w.target
            running += 1
        if d.prefill:
            d.decodes = 0  # a prefill step runs no decodes
            return
        self._victims(d, free, d.decodes)

    def _apply(self, d: _Decision) -> None:
        assert d.time is not None
        self._planned = None
        end = d.start_s + d.time.total_s
        for v in d.preempt:
            self._preempt(v)
        for w in d.admit:
            self._waiting.remove(w)
            w.phase = Phase.PREFILL
            w.admitted_s = w.admitted_s if w.admitted_s is not None else d.start_s
            self._order += 1
            w.order = self._order
            self._prefilling.append(w)
        self._account(d.time, d.clock_mhz, 1)
        if d.decodes:
            self._g += 1
        self.time_s = end
        for r, _, chunk in d.prefill:
            r.computed += chunk
            self._prefill_kv += chunk
            if r.computed >= r.target:
                self._start_decoding(r, end)
        self._finish_due()

    def _preempt(self, v: Request) -> None:
        made = self.generated(v)
        self._release(v)
        v.phase = Phase.WAITING
        v.base = made
        v.target = v.prompt + made
        v.computed = 0
        v.preemptions += 1
        self.totals.preemptions += 1
        self._waiting.appendleft(v)

    def _start_decoding(self, r: Request, end: float) -> None:
        self._prefilling.remove(r)
        self._prefill_kv -= r.computed
        if r.first_token_s is None:
            r.first_token_s = end
            r.base = 1
        if r.base >= r.output:
            self._finish_request(r, end)
            return
        r.phase = Phase.DECODE
        r.g_join = self._g
        r.epoch += 1
        self._decoding[r.id] = r
        self._s0 += r.target + 1 - r.g_join
        heapq.heappush(self._finish, (self._g + r.output - r.base, r.order, r.epoch, r))

    def _finish_due(self) -> None:
        while self._finish and self._finish[0][0] <= self._g:
            _, _, epoch, r = heapq.heappop(self._finish)
            if epoch != r.epoch or r.phase is not Phase.DECODE:
                continue
            self._release(r)
            self._finish_request(r, self.time_s)

    def _finish_request(self, r: Request, end: float) -> None:
        r.phase = Phase.DONE
        r.finish_s = end
        first = r.first_token_s if r.first_token_s is not None else end
        tpot = (end - first) / (r.output - 1) if r.output > 1 else None
        queue = (r.admitted_s if r.admitted_s is not None else r.arrival_s) - r.arrival_s
        self._done.append(
            Finished(
                r.id,
                r.arrival_s,
                r.prompt,
                r.output,
                first - r.arrival_s + self.request_latency_s,
                tpot,
                end,
                queue,
                r.preemptions,
            )
        )

    def _account(self, t: StepTime, clock: int, steps: int) -> None:
        tot = self.totals
        tot.compute_s += t.compute_s
        tot.memory_s += t.memory_s
        tot.overhead_s += t.overhead_s
        tot.comm_s += t.comm_s
        tot.latency_s += t.latency_s
        tot.steps += steps
        g = self._power_factors.get(clock)
        if g is None:
            g = self._power_factors[clock] = self.power.clock_factors(clock)
        tot.energy_j += self.power.step_energy_at(t, g, self.config.tp)

    def requests(self) -> Iterator[Request]:
        return iter(self._requests.values())


class _Run(enum.Enum):
    RAN = 0
    NO = 1  # not a run: schedule one step
    STOP = 2  # the next step ends after the horizon


def kv_capacity_tokens(cost: StepCost, config: EngineConfig) -> int:
    """KV-cache tokens one instance holds (whole blocks)."""
    arch, tp = cost.arch, config.tp
    per_gpu = config.gpu_memory_bytes * config.gpu_memory_utilization - arch.weights_bytes() / tp
    per_gpu -= config.reserved_bytes_per_gpu
    tokens = int(max(per_gpu, 0.0) // arch.kv_bytes_per_token(tp))
    return tokens - tokens % config.block_size
