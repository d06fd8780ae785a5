"""GPU power while an engine runs: idle at a locked clock, and while a step is compute- or memory-bound.

Per GPU, with ``g = (f / f_max) ** gamma`` and ``gm = (f / f_max) ** gamma_memory``::

    idle(f)    = idle_w + idle_clock_w * g        (an engine loaded, nothing running, clock locked at f)
    compute(f) = idle(f) + compute_w * g          (while a step's compute-bound part runs)
    memory(f)  = idle(f) + memory_w * gm          (while a memory- or communication-bound part runs)

A step's overhead time (CPU) draws idle power. The five numbers are fitted to the DynamoLLM
characterization's instance power (``calibration``); a GPU that holds no instance draws
``EMPTY_GPU_W``. Everything here is modelled.
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
    gamma_comm: float = 1.0

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
        if step.comm_s:
            per_gpu += step.comm_s * self.comm_w * self.comm_factor(clock_mhz)
        return per_gpu * gpus

    def comm_factor(self, clock_mhz: float) -> float:
        return max(min(clock_mhz / self.max_clock_mhz, 1.0), 0.0) ** self.gamma_comm
