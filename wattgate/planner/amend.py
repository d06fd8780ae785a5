"""The reactive path in the planner leader: between plans, signals from Redis, ``reactive.react``, a plan amendment.

Every ``REACT_TICK_S`` the leader reads the TTFTs of the requests the gateways recorded as finished in the last
``ReactSettings.window_s`` (the observations stream) and judges each pool of the current plan by the largest
of them, against the pool's TTFT target (``reactive.react``, the function the trace replay runs). What it
decides is published as a new version of the current plan (an amendment: same forecast, routes and
baselines), which agents and gateways apply as they apply any plan:

- a held instance carries ``clock_floor_mhz`` (its top clock: the profile's highest for its TP and pool),
  which the agent's clock loop honours (without a clock loop, the agent locks it);
- one more instance for a pool whose clocks were already held at the top: a standby instance of the pool
  and TP planned active again where there is one (its agent wakes it), else a new one placed on GPUs no
  instance of the plan uses (``placement.place``), at the top clock, with the pool's mean planned load;
- a hold that ended (stand-down) is an amendment without that floor.

The next scheduled plan re-plans from the amended one (the added instance counts as running) and keeps the
floors still held (``carry``). The signal's limit: a request counts once it has finished, so a pool whose
requests are all still waiting shows nothing until the first of them ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from wattgate.planner.contract import Plan, PlannedInstance
from wattgate.planner.model import Group, Inventory
from wattgate.planner.placement import place
from wattgate.planner.reactive import Add, Member, Memory, PoolSignal, Reaction, ReactSettings, forget, react
from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile

log = logging.getLogger(__name__)

REACT_TICK_S = 5.0  # the reactive path's period: the agents' clock loop's
REASON = "reactive path: "  # the amendment's reasons start with this


class Signals(Protocol):
    def recent_ttfts(self, since: float) -> list[tuple[str, float, float]]: ...
    def current_plan(self) -> Plan | None: ...
    def publish(self, build: Callable[[int], Plan]) -> Plan: ...


class ReactivePath:
    """The leader's reactive path: its memory of holds and additions, and one step every ``REACT_TICK_S``."""

    def __init__(self, profile: Profile, slo: SloTargets, settings: ReactSettings) -> None:
        self.profile, self.slo, self.settings = profile, slo, settings
        self.memory = Memory()
        self.floors: dict[str, int] = {}  # instance id -> floor, as last decided
        self.last_s: float | None = None

    def due(self, now: float) -> bool:
        return self.last_s is None or now - self.last_s >= REACT_TICK_S

    def step(self, store: Signals, inventory: Inventory, now: float) -> Plan | None:
        """One pass: the amended plan it published, or None (nothing to change, or no plan yet)."""
        self.last_s = now
        current = store.current_plan()
        if current is None:
            return None
        samples = store.recent_ttfts(now - self.settings.window_s)
        reaction = react(self.signals(current, samples), self.memory, now, self.settings)
        self.memory = forget(reaction.memory, [p.id for p in current.instances])
        added = self._adds(current, reaction.add, inventory, now)
        instances = [
            *(replace(p, clock_floor_mhz=reaction.floors.get(p.id, 0)) for p in current.instances if p.id not in added),
            *added.values(),
        ]
        self.floors = {p.id: p.clock_floor_mhz for p in instances if p.clock_floor_mhz}
        if sorted(instances, key=lambda p: p.id) == sorted(current.instances, key=lambda p: p.id):
            return None
        reasons = [r for r in current.reasons if not r.startswith(REASON)]
        reasons += _reasons(reaction, samples, list(added.values()), self.settings.window_s)
        before = {p.id: p.power_w for p in current.instances}  # a woken instance was counted at its sleeping power
        power = current.predicted_power_w + sum(p.power_w - before.get(p.id, 0.0) for p in added.values())

        def build(version: int) -> Plan:
            return replace(
                current, version=version, created_at=now, instances=instances, reasons=reasons, predicted_power_w=power
            )

        plan = store.publish(build)
        for r in plan.reasons:
            if r.startswith(REASON):
                log.info("planner: v%d: %s", plan.version, r)
        return plan

    def signals(self, plan: Plan, samples: Sequence[tuple[str, float, float]]) -> list[PoolSignal]:
        """Each pool of ``plan`` with serving instances: the largest TTFT sampled and when the newest came."""
        waited: dict[str, tuple[float, float]] = {}
        for pool, ttft, ts in samples:
            w, at = waited.get(pool, (0.0, ts))
            waited[pool] = (max(w, ttft), max(at, ts))
        members: dict[str, list[Member]] = {}
        for p in plan.instances:
            if not p.standby:
                clock = max(p.sm_clock_mhz, p.clock_floor_mhz)
                members.setdefault(p.pool, []).append(Member(p.id, p.tp, clock, self.top(p)))
        out = []
        for pool, ms in sorted(members.items()):
            try:
                target = self.slo.ttft_for(RequestType.parse(pool))
            except ProfilesError:
                continue  # not a request type's pool: nothing to judge it by
            seen = waited.get(pool)
            out.append(PoolSignal(pool, seen[0] if seen else None, target, seen[1] if seen else 0.0, tuple(ms)))
        return out

    def top(self, p: PlannedInstance) -> int:
        """The top clock of ``p``: the profile's highest for its TP and pool (else its planned clock)."""
        try:
            return max(p.sm_clock_mhz, self.profile.clocks(p.tp, RequestType.parse(p.pool))[-1])
        except (ProfilesError, IndexError):
            return p.sm_clock_mhz

    def carry(self, instances: Sequence[PlannedInstance], now: float) -> list[PlannedInstance]:
        """A scheduled plan's instances, with the floors of those still held."""
        return [
            replace(p, clock_floor_mhz=self.floors[p.id])
            if p.id in self.floors and self.memory.held(p.id, now) and not p.standby
            else p
            for p in instances
        ]

    def _adds(self, current: Plan, adds: Sequence[Add], inventory: Inventory, now: float) -> dict[str, PlannedInstance]:
        """Instance id -> the instance each ``Add`` gets: a standby one of its pool and TP woken, else a new one."""
        out: dict[str, PlannedInstance] = {}
        for a in adds:
            pool = [p for p in current.instances if p.pool == a.pool and not p.standby]
            load = sum(p.load_rps for p in pool) / max(len(pool), 1)
            power = sum(p.power_w for p in pool) / max(len(pool), 1)
            taken = [*current.instances, *out.values()]
            asleep = [p for p in taken if p.standby and p.pool == a.pool and p.tp == a.tp and p.id not in out]
            others = [p for p in taken if p not in asleep]
            spot = place((Group(a.pool, a.tp, a.clock_mhz, 1, load, power),), inventory, asleep[:1], others)
            if not spot.instances:
                log.warning("planner: reactive path: no free GPUs for one more TP%d instance of %s", a.tp, a.pool)
                continue
            p = replace(spot.instances[0], standby=False, clock_floor_mhz=a.clock_mhz)
            out[p.id] = p
            self.memory = self.memory.added(a.pool, p.id, now, self.settings)
        return out


def _reasons(
    reaction: Reaction, samples: Sequence[tuple[str, float, float]], added: Sequence[PlannedInstance], window_s: float
) -> list[str]:
    out = []
    for pool in reaction.raised:
        worst = max((t for p, t, _ in samples if p == pool), default=0.0)
        out.append(
            f"{REASON}{pool}: a request waited {worst:.2f} s for its first token in the last {window_s:.0f} s "
            "(measured): its instances held at their top clock"
        )
    out += [f"{REASON}{p.pool}: one more TP{p.tp} instance {p.id} (its clocks were at the top already)" for p in added]
    if reaction.stand_down:
        out.append(f"{REASON}clock hold ended for {', '.join(reaction.stand_down)}")
    return out
