"""The instance-level clock loop's actuator (every 5 s): live load in, ``choose_clock`` decides,
the clock controller applies it only when it differs. A clock floor the plan sets on an instance (the
planner's reactive path) is honoured: the clock is never below it. ``burst`` (every agent tick) applies the
burst rule (``clock_policy.burst_until``): an instance whose engine has a queue goes to its top clock at
once, and back to the loop's choice once its queue has been short for the hold time."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from wattgate.agent.actuator import Actuator
from wattgate.agent.clock_policy import (
    DEFAULT_BURST,
    BurstRule,
    ClockDecision,
    ClockInput,
    ClockReason,
    burst_until,
    choose_clock,
)
from wattgate.agent.gpu.base import GpuError
from wattgate.agent.running import snap_up
from wattgate.agent.store import AgentStore, StoreError
from wattgate.planner.contract import InstanceState
from wattgate.profiles.classes import SloTargets
from wattgate.profiles.table import Profile

log = logging.getLogger(__name__)


class ClockLoop:
    def __init__(
        self,
        actuator: Actuator,
        profile: Profile,
        slo: SloTargets,
        store: AgentStore | None,
        window_s: int = 10,
        *,
        burst: BurstRule = DEFAULT_BURST,
    ) -> None:
        self._act = actuator
        self._profile = profile
        self._slo = slo
        self._store = store
        self._window_s = window_s
        self.burst_rule = burst
        self.last: dict[str, ClockDecision] = {}  # what each instance runs at: the loop's choice, or the burst rule's
        self._chosen: dict[str, ClockDecision] = {}  # the loop's own choice (floors included)
        self._burst: dict[str, float] = {}  # instances the burst rule holds at the top clock -> until when

    def _pool_shares(self, now: float, serves: Mapping[str, Sequence[str]]) -> dict[str, float] | None:
        """Each pool's live load (gateway windows of every type it serves) per ready instance; None when
        Redis is down."""
        if self._store is None:
            return None
        try:
            ready = Counter(r.pool for r in self._store.instances() if r.state == InstanceState.READY)
            pools = {r.planned.pool for r in self._act.instances.values()}
            return {
                p: sum(self._store.pool_load_rps(t, now, self._window_s) for t in _served(p, serves)) / max(1, ready[p])
                for p in pools
            }
        except StoreError as exc:
            log.warning("clock loop: no live load (%s): clocks stay where they are", exc)
            return None

    def tick(
        self,
        now: float,
        serves: Mapping[str, Sequence[str]] | None = None,
        headroom: float = 1.0,
        floors: Mapping[str, int] | None = None,
    ) -> dict[str, ClockDecision]:
        """One pass over the ready instances; ``now`` is unix time (the load windows' clock); ``serves``:
        the plan's pool -> request types it serves (a pool not in it serves its own type); ``headroom``:
        the plan's share of an instance's SLO capacity a clock may be loaded to; ``floors``: instance id ->
        the plan's clock floor for it."""
        serves = serves or {}
        floors = floors or {}
        shares = self._pool_shares(now, serves)
        if shares is None:
            return {}
        decisions: dict[str, ClockDecision] = {}
        for iid, r in list(self._act.instances.items()):
            if r.state is not InstanceState.READY or not r.planned.pool:
                continue  # an external server no plan gave a pool yet: its clocks stay as they are
            supported = set.intersection(*(set(self._act.gpus[g].supported_sm_clocks_mhz()) for g in r.planned.gpus))
            if not supported:
                continue
            pool = r.planned.pool
            x = ClockInput(
                pool, r.planned.tp, shares.get(pool, 0.0), r.engine.in_flight(), _served(pool, serves), headroom
            )
            d = choose_clock(self._profile, self._slo, sorted(supported), x)
            floor = floors.get(iid, 0)
            if floor > d.sm_clock_mhz:
                d = ClockDecision(snap_up(floor, sorted(supported)), ClockReason.FLOOR, None)
            self._chosen[iid] = d
            if iid in self._burst:  # the burst rule holds it at the top clock until its queue has been empty a while
                d = ClockDecision(max(supported), ClockReason.BURST, None)
            decisions[iid] = d
            if self.last.get(iid) != d:
                log.info("%s: %d MHz (%s) at %.2f req/s", iid, d.sm_clock_mhz, d.reason, x.load_rps)
            self._apply(iid, d)
        self.last = decisions
        return decisions

    def burst(self, now: float) -> dict[str, ClockDecision]:
        """The burst rule on every ready instance's engine queue (``clock_policy.burst_until``): top clock at once
        while requests wait, the loop's last choice once the queue has been empty the hold time. Returns the
        clocks it changed. ``now``: any monotonic seconds (only differences count)."""
        changed: dict[str, ClockDecision] = {}
        if not self.burst_rule.on:
            return changed
        for iid, r in list(self._act.instances.items()):
            if r.state is not InstanceState.READY or not r.planned.pool:
                self._burst.pop(iid, None)
                continue
            held = self._burst.get(iid)
            until = burst_until(now, r.engine.waiting(), held, self.burst_rule, fixed=not r.engine.managed)
            if until is not None:
                self._burst[iid] = until
                if held is None:
                    supported = set.intersection(
                        *(set(self._act.gpus[g].supported_sm_clocks_mhz()) for g in r.planned.gpus)
                    )
                    if supported:
                        changed[iid] = ClockDecision(max(supported), ClockReason.BURST, None)
            elif held is not None:
                del self._burst[iid]
                chosen = self._chosen.get(iid)
                if chosen is not None:
                    changed[iid] = chosen
        for iid, d in changed.items():
            if self.last.get(iid) != d:
                log.info("%s: %d MHz (%s)", iid, d.sm_clock_mhz, d.reason)
            if self._apply(iid, d):
                self.last[iid] = d
        return changed

    def _apply(self, iid: str, d: ClockDecision) -> bool:
        """Lock instance ``iid``'s GPUs at ``d``'s clock and record it; False when a GPU refused."""
        r = self._act.instances[iid]
        try:
            for g in r.planned.gpus:
                self._act.clocks.set_clock(g, d.sm_clock_mhz)
        except GpuError as exc:
            log.error("%s: cannot set %d MHz: %s", iid, d.sm_clock_mhz, exc)
            return False
        if self._act.clocks.clock_control:
            self._act.set_clock_record(r, d.sm_clock_mhz)
        return True


def _served(pool: str, serves: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The request types ``pool`` serves: its own and those the plan spills into it."""
    return (pool, *(t for t in serves.get(pool, ()) if t != pool))
