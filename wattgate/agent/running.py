"""What the actuator keeps of each instance (``Running``), how long it waits (``Timeouts``), the clock a plan's
clock becomes on a GPU (``snap_up``), and what the heartbeat says of instances in trouble (``instance_notes``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from wattgate.agent.engines.base import Engine
from wattgate.planner.contract import InstanceState, PlannedInstance

WAKE_NOTE_S = 300.0  # how long the heartbeat still tells of a wake-up that failed (then restarted cold)


@dataclass(frozen=True)
class Timeouts:
    drain_s: float = 60.0  # in-flight requests get this long to finish before the engine is stopped
    drain_notice_s: float = 1.0  # after marking draining, before counting in-flight: gateways notice
    start_s: float = 900.0  # weights loading can take minutes
    poll_s: float = 0.5
    start_retries: int = 5  # failed starts in a row (never healthy) before the agent gives up on an instance
    sleep_s: float = 120.0  # longest wait for an engine to fall asleep or wake up (vLLM sleep mode)


@dataclass
class Running:
    """Runtime state of one instance on this node (mutable: the actuator owns it)."""

    planned: PlannedInstance
    engine: Engine
    state: InstanceState
    sm_clock_mhz: int | None = None
    crashes: int = 0
    failed_starts: int = 0  # starts in a row that never became healthy
    restart_at: float | None = None
    history: list[str] = field(default_factory=list)
    wake_failed: tuple[float, str] | None = None  # (monotonic time, why) of the last wake-up that failed


def instance_notes(instances: Iterable[Running], sleep_failure: str, now: float) -> list[str]:
    """The heartbeat's lines on failed instances, wake-ups that failed lately and sleeping turned off
    (``now``: monotonic)."""
    out = []
    if sleep_failure:
        out.append(
            f"sleep mode off since a sleep failed ({sleep_failure}): standby instances are kept stopped "
            "until the agent restarts"
        )
    for r in instances:
        failed = r.state is InstanceState.FAILED
        if r.wake_failed is not None and not failed and now - r.wake_failed[0] < WAKE_NOTE_S:
            ago = now - r.wake_failed[0]
            out.append(f"instance {r.planned.id}: wake_up failed {ago:.0f} s ago ({r.wake_failed[1]}); restarted cold")
        if not failed or not r.history:
            continue
        if r.restart_at is None:
            nxt = f"gave up after {r.failed_starts} failed starts; fix it, then restart the agent or re-plan"
        else:
            nxt = f"restart in {max(0.0, r.restart_at - now):.0f} s"
        out.append(f"instance {r.planned.id} failed: {r.history[-1]}; {nxt}")
    return out


def snap_up(mhz: int, supported: Sequence[int]) -> int:
    """The lowest supported clock at or above ``mhz`` (never slower than planned), else the highest."""
    above = [c for c in supported if c >= mhz]
    return min(above) if above else max(supported)
