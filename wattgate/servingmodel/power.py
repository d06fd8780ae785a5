"""GPU power while an engine runs: idle at a locked clock, and while a step is compute- or memory-bound.

Per GPU, with ``g = (f / f_max) ** gamma`` and ``gm = (f / f_max) ** gamma_memory``::

    idle(f)    = idle_w + idle_clock_w * g        (an engine loaded, nothing running, clock locked at f)
    compute(f) = idle(f) + compute_w * g          (while a step's compute-bound part runs)
    memory(f)  = idle(f) + memory_w * gm          (while a memory-bound part runs: HBM streaming)
    comm(f)    = idle(f) + comm_w * gm            (while an all-reduce runs, TP > 1)
    latency(f) = idle(f) + latency_w * gm         (while a latency-bound kernel runs, ``steps``)

A step's overhead time (CPU) draws idle power. The watt figures and exponents are fitted to the
DynamoLLM characterization's instance power (``calibration``, ``fit.fit_power``), within the board's
700 W: ``idle_w + idle_clock_w + each busy figure <= 700``. A GPU that holds no instance draws
``EMPTY_GPU_W``. Everything here is modelled.

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

from wattgate.servingmodel.steps import StepTime

# An H100 SXM with no process on it, in its idle performance state: the ~70 W the project uses
# everywhere for a GPU that holds no instance (NVIDIA quotes no idle figure; nvidia-smi readings of
# idle H100 SXM boards are typically 60-80 W). Not measured here.
EMPTY_GPU_W = 70.0


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

    def _g(self, clock_mhz: float) -> tuple[float, float]:
        r = max(min(clock_mhz / self.max_clock_mhz, 1.0), 0.0)
        return r**self.gamma, r**self.gamma_memory

    def idle_gpu_w(self, clock_mhz: float) -> float:
        return self.idle_w + self.idle_clock_w * self._g(clock_mhz)[0]

    def clock_factors(self, clock_mhz: float) -> tuple[float, float]:
        """``(g, gm)`` at ``clock_mhz`` (module docstring), for ``step_energy_at``: an engine keeps them per clock."""
        return self._g(clock_mhz)

    def step_energy_j(self, step: StepTime, clock_mhz: float, gpus: int) -> float:
        """Energy of all ``gpus`` of a TP group over one step (or a run of steps)."""
        return self.step_energy_at(step, self._g(clock_mhz), gpus)

    def step_energy_at(self, step: StepTime, factors: tuple[float, float], gpus: int) -> float:
        """``step_energy_j`` with the clock's ``clock_factors`` given."""
        g, gm = factors
        idle = self.idle_w + self.idle_clock_w * g
        per_gpu = step.total_s * idle + step.compute_s * self.compute_w * g + step.memory_s * self.memory_w * gm
        per_gpu += step.comm_s * self.comm_w * gm
        per_gpu += step.latency_s * (self.memory_w if self.latency_w is None else self.latency_w) * gm
        return per_gpu * gpus
