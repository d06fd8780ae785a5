"""GPU power while an engine runs: idle at a locked clock, and while a step is compute- or memory-bound.

Per GPU, with ``g = (f / f_max) ** gamma`` and ``gm = (f / f_max) ** gamma_memory``::

    idle(f)    = idle_w + idle_clock_w * g                       (an engine loaded, nothing running, clock at f)
    compute(f) = min(idle(f) + compute_w * g, board_limit_w)     (while a step's compute-bound part runs)
    memory(f)  = min(idle(f) + memory_w * gm, board_limit_w)     (while a memory-bound part runs: HBM streaming)
    comm(f)    = min(idle(f) + comm_w * gm, board_limit_w)       (while an all-reduce runs, TP > 1)
    latency(f) = min(idle(f) + latency_w * gm, board_limit_w)    (while a latency-bound kernel runs, ``steps``)

A step's overhead time (CPU) draws idle power. The watt figures and exponents are fitted to the
DynamoLLM characterization's instance power (``calibration``, ``fit.fit_power``). A GPU that holds no
instance draws ``EMPTY_GPU_W``. Everything here is modelled.

**The board limit.** An H100 SXM's power brake holds the board at its 700 W limit (``board_limit_w``):
when the work would draw more, the GPU lowers its clock until it does not. ``compute_w`` is what the
tensor cores would draw above idle at ``f_max`` without that limit; where ``idle + compute_w * g``
passes the limit (above ``cap_clock_mhz``, 1,471 MHz as fitted), compute-bound time draws the
limit, whatever the clock is locked at, and the unlocked state (``nvidia-smi -rgc``: the GPU boosts up
to ``f_max`` under the same limit, which is how the characterization's "1980 MHz" rows ran) is the same
state as a clock locked at ``f_max``. The characterization asks for it: fitted with every busy figure
held under the limit (until December 2026), compute power sat on that bound (idle + compute_w = 700 W
at ``f_max``) and long-prompt rows, at compute-bound power for most of their busy time, read 9-15% low;
their measured power and their measured prefill speed stop rising above 1,400-1,600 MHz (README
*Validation*). Only the power is capped
here: the step times come from the clock law (``steps.ClockLaw``), fitted on the same rows' TTFT and time
between tokens, whose compute exponent (0.4) carries the slower-than-locked prefill at the top clocks; a
compute-side knee at the cap clock would model it directly (not built).

**Why four kinds of busy time.** A GPU's power follows how hard it works, not how long a kernel
takes: streaming HBM at full bandwidth or keeping the tensor cores fed draws much more than a kernel
that reaches neither roofline. Two kinds of GPU time do neither, and both grow with TP:

- *All-reduces* over NVLink move ``T x hidden`` bf16 values between GPUs through a handful of SMs
  (vLLM's custom all-reduce or NCCL's ring kernels, a few CTAs each): the message per GPU is the
  same at every TP while the GEMMs shrink as 1/TP, so they are 11% of a TP8 instance's time under
  the characterization's loads and 4% of a TP2 one's.
- *Latency-bound kernels*: decode attention's per-batch floor (about 1 ms a step at every TP) and the
  part of a small-batch GEMM beyond what streaming its weights at the effective bandwidth takes
  (the measured TP8 GEMMs reach 2.45 TB/s, the TP2 ones 2.75 TB/s): 8% of a TP8 instance's time,
  2.5% of a TP2 one's.

Priced at memory-bound power (as until December 2026) both made the model read a median 15% low at
TP2 and 9% high at TP8 over the characterization. Fitted on their own, ``comm_w`` and ``latency_w``
both go to their lower bound (nothing above idle), and the per-TP medians fall to within 5%
(README *Validation*). ``comm_w`` and ``latency_w`` default to 0 and to ``memory_w``, so a calibration
written before they existed still loads (refit it: its all-reduces then draw idle power).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from wattgate.servingmodel.steps import StepTime

# An H100 SXM with no process on it, in its idle performance state: the ~70 W the project uses
# everywhere for a GPU that holds no instance (NVIDIA quotes no idle figure; nvidia-smi readings of
# idle H100 SXM boards are typically 60-80 W). Not measured here.
EMPTY_GPU_W = 70.0
# The H100 SXM's maximum board power (NVIDIA's H100 datasheet: "up to 700 W"; the default power limit).
BOARD_LIMIT_W = 700.0


class PowerAt(NamedTuple):
    """Per-GPU watts at one clock: idle, and what each kind of busy second adds to it (the board limit applied)."""

    idle_w: float
    compute_w: float
    memory_w: float
    comm_w: float
    latency_w: float


@dataclass(frozen=True)
class PowerModel:
    idle_w: float = 70.0
    idle_clock_w: float = 50.0
    compute_w: float = 500.0
    memory_w: float = 250.0
    gamma: float = 2.0
    gamma_memory: float = 1.0
    max_clock_mhz: int = 1980
    comm_w: float = 0.0
    latency_w: float | None = None  # None: latency-bound seconds draw memory-bound power
    board_limit_w: float = BOARD_LIMIT_W

    def _g(self, clock_mhz: float) -> tuple[float, float]:
        r = max(min(clock_mhz / self.max_clock_mhz, 1.0), 0.0)
        return r**self.gamma, r**self.gamma_memory

    def idle_gpu_w(self, clock_mhz: float) -> float:
        return self.idle_w + self.idle_clock_w * self._g(clock_mhz)[0]

    def clock_factors(self, clock_mhz: float) -> PowerAt:
        """The watts at ``clock_mhz`` (module docstring), for ``step_energy_at``: an engine keeps them per clock."""
        g, gm = self._g(clock_mhz)
        idle = self.idle_w + self.idle_clock_w * g
        room = max(self.board_limit_w - idle, 0.0)
        latency_w = self.memory_w if self.latency_w is None else self.latency_w
        return PowerAt(
            idle,
            min(self.compute_w * g, room),
            min(self.memory_w * gm, room),
            min(self.comm_w * gm, room),
            min(latency_w * gm, room),
        )

    def cap_clock_mhz(self) -> float | None:
        """The clock above which compute-bound time draws the board limit (None: not even at ``f_max``): where
        ``idle_w + (idle_clock_w + compute_w) * (f / f_max) ** gamma`` reaches it."""
        room = self.board_limit_w - self.idle_w
        rise = self.idle_clock_w + self.compute_w
        if rise < room:
            return None
        if room <= 0:
            return 0.0
        return float(self.max_clock_mhz * (room / rise) ** (1.0 / self.gamma))

    def step_energy_j(self, step: StepTime, clock_mhz: float, gpus: int) -> float:
        """Energy of all ``gpus`` of a TP group over one step (or a run of steps)."""
        return self.step_energy_at(step, self.clock_factors(clock_mhz), gpus)

    def step_energy_at(self, step: StepTime, w: PowerAt, gpus: int) -> float:
        """``step_energy_j`` with the clock's ``clock_factors`` given."""
        per_gpu = (
            step.total_s * w.idle_w
            + step.compute_s * w.compute_w
            + step.memory_s * w.memory_w
            + step.comm_s * w.comm_w
            + step.latency_s * w.latency_w
        )
        return per_gpu * gpus

    def mean_w(self, busy: StepTime, duration_s: float, clock_mhz: float) -> float:
        """Mean per-GPU power over ``duration_s`` at one clock that held ``busy`` (summed over its steps),
        idle the rest of the time: how a run's power follows from its busy seconds."""
        w = self.clock_factors(clock_mhz)
        return w.idle_w + (self.step_energy_at(busy, w, 1) - busy.total_s * w.idle_w) / duration_s
