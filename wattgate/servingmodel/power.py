"""GPU power while an engine runs: idle at a locked clock, and while a step is compute- or memory-bound.

Per GPU, with ``g = (f / f_max) ** gamma`` and ``gm = (f / f_max) ** gamma_memory``::

    idle(f)    = idle_w + idle_clock_w * g        (an engine loaded, nothing running, clock locked at f)
    compute(f) = idle(f) + compute_w * g          (while a step's compute-bound part runs)
    memory(f)  = idle(f) + memory_w * gm          (while a memory-bound part runs)
    comm(f)    = idle(f) + comm_w * gm            (while an all-reduce runs, TP > 1)

A step's overhead time (CPU) draws idle power. The six numbers are fitted to the DynamoLLM
characterization's instance power (``calibration``, ``fit.fit_power``), within the board's 700 W:
``idle_w + idle_clock_w + max(compute_w, memory_w, comm_w) <= 700``. A GPU that holds no instance
draws ``EMPTY_GPU_W``. Everything here is modelled.

**All-reduce power.** An all-reduce over NVLink moves ``T x hidden`` bf16 values between GPUs through
a handful of SMs (vLLM's custom all-reduce or NCCL's ring/tree kernels, a few CTAs each): it neither
streams HBM at full bandwidth nor keeps the tensor cores busy, so it gets its own figure rather than
the memory-bound one. It matters because its share of a step grows with TP (the message per GPU is
the same at every TP while the GEMMs shrink as 1/TP: 11% of a TP8 instance's time under the
characterization's loads, 4% of a TP2 one's). Priced at memory-bound power (as until December 2026)
the model read a median 15% low at TP2 and 9% high at TP8; fitted on its own, ``comm_w`` goes to its
lower bound (0 W above idle): what is left of the TP structure is in README *Validation*.
``comm_w`` defaults to 0 so a calibration written before it existed still loads (its all-reduces
then draw idle power: refit it).
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

    def step_energy_j(self, step: StepTime, clock_mhz: float, gpus: int) -> float:
        """Energy of all ``gpus`` of a TP group over one step (or a run of steps)."""
        g, gm = self._g(clock_mhz)
        idle = self.idle_w + self.idle_clock_w * g
        per_gpu = step.total_s * idle + step.compute_s * self.compute_w * g + step.memory_s * self.memory_w * gm
        per_gpu += step.comm_s * self.comm_w * gm
        per_gpu += step.latency_s * (self.memory_w if self.latency_w is None else self.latency_w) * gm
        return per_gpu * gpus
