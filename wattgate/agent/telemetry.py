"""Per-GPU readings and the heartbeat, built from the GPUs, the clock controller and the actuator.

GPU power and energy are measured (NVML counters) for NVML GPUs and modelled for simulated ones;
each reading carries its GPU's ``source``. A reading that fails is left out and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from wattgate.agent.actuator import Actuator
from wattgate.agent.clocks import ClockController
from wattgate.agent.gpu.base import Gpu, GpuError
from wattgate.planner.contract import (
    HEARTBEAT_REVISION,
    GpuReading,
    Heartbeat,
    InstanceState,
    NodeTelemetry,
    UnmanagedInstance,
)

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(
        self,
        node: str,
        gpus: Sequence[Gpu],
        clocks: ClockController,
        actuator: Actuator,
        *,
        managed: bool = True,
        unmanaged: Sequence[UnmanagedInstance] = (),
    ) -> None:
        self.node = node
        self.managed = managed
        self.unmanaged = list(unmanaged)
        self._gpus = list(gpus)
        self._clocks = clocks
        self._act = actuator
        self._failing: set[int] = set()

    def readings(self) -> list[GpuReading]:
        out = []
        for g in self._gpus:
            try:
                reading = GpuReading(
                    index=g.index,
                    uuid=g.uuid,
                    name=g.name,
                    power_w=round(g.power_w(), 3),
                    energy_j=round(g.energy_j(), 3),
                    sm_clock_mhz=g.sm_clock_mhz(),
                    locked_clock_mhz=self._clocks.locked_mhz(g.index),
                    source=g.source,
                )
            except GpuError as exc:
                if g.index not in self._failing:
                    log.error("GPU %d: cannot read power/energy/clock: %s", g.index, exc)
                self._failing.add(g.index)
                continue
            self._failing.discard(g.index)
            out.append(reading)
        return out

    def node_telemetry(self, now: float) -> NodeTelemetry:
        states = {i: r.state.value for i, r in list(self._act.instances.items())}  # copy: another thread edits it
        return NodeTelemetry(node=self.node, ts=now, gpus=self.readings(), instances=states)

    def heartbeat(self, now: float, plan_version: int | None, notes: Sequence[str]) -> Heartbeat:
        return Heartbeat(
            node=self.node,
            ts=now,
            plan_version=plan_version,
            gpu_count=len(self._gpus),
            clock_control=self._clocks.clock_control,
            notes=[*self._clocks.notes, *notes],
            managed=self.managed,
            unmanaged=self.servers(),
            revision=HEARTBEAT_REVISION,
            sleep_mode=self._act.can_sleep,
            asleep=sorted(i for i, r in list(self._act.instances.items()) if r.state is InstanceState.ASLEEP),
        )

    def servers(self) -> list[UnmanagedInstance]:
        """The unmanaged servers, each with the pool it serves now (the plan's, once it gave one)."""
        running = dict(self._act.instances)  # copy: another thread edits it
        return [replace(u, pool=running[u.id].planned.pool) if u.id in running else u for u in self.unmanaged]
