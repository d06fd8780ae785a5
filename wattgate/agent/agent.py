"""The agent's control loop: read the plan, reconcile, supervise, run the clock loop, publish
telemetry and the heartbeat. ``tick()`` runs one pass (tests call it without sleeping).

Redis down: the agent keeps running on the last plan it saw, says so in its log and heartbeat
notes, and re-registers its instances when Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from wattgate.agent.actuator import Actuator
from wattgate.agent.clock_loop import ClockLoop
from wattgate.agent.clocks import ClockController
from wattgate.agent.gpu.base import GpuError
from wattgate.agent.metrics import AgentMetrics
from wattgate.agent.reconcile import ActionKind, diff
from wattgate.agent.store import AgentStore, BadPlanError, StoreError
from wattgate.agent.telemetry import Telemetry
from wattgate.planner.contract import Plan, PlannedInstance

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        *,
        node: str,
        actuator: Actuator,
        clocks: ClockController,
        store: AgentStore,
        telemetry: Telemetry,
        clock_loop: ClockLoop | None = None,
        externals: Sequence[PlannedInstance] | None = None,
        clock_interval_s: float = 5.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.node = node
        self.act = actuator
        self.clocks = clocks
        self.store = store
        self.telemetry = telemetry
        self.clock_loop = clock_loop
        self.externals = list(externals) if externals is not None else None
        self.clock_interval_s = clock_interval_s
        self.metrics = metrics
        self.plan: Plan | None = None
        self.redis_ok = True
        self.problems: tuple[str, ...] = ()
        self._next_clock = 0.0
        self._bad_plan = ""
        self._reannounce = False  # Redis failed since the records were last written: announce them
        self._floors: dict[str, int] = {}  # the plan's clock floors for this node's instances (reactive path)

    def desired(self) -> list[PlannedInstance] | None:
        """What should run here; None until a plan was seen (then nothing is started or stopped). External
        servers always run; the plan gives each one its pool, clock and load once it names it."""
        if self.externals is not None:
            return follow_plan(self.externals, self.plan, self.node)
        return self.plan.for_node(self.node) if self.plan is not None else None

    def refresh_plan(self) -> None:
        try:
            plan = self.store.plan()
        except StoreError as exc:
            self._redis_down(exc)
            return
        except BadPlanError as exc:
            if str(exc) != self._bad_plan:
                log.error("%s: keeping the last plan", exc)
            self._bad_plan = str(exc)
            self._redis_up()
            return
        self._bad_plan = ""
        self._redis_up()
        if plan is not None and (self.plan is None or plan.version != self.plan.version):
            log.info(
                "plan version %d: %d instance(s) for node %s", plan.version, len(plan.for_node(self.node)), self.node
            )
            self.plan = plan

    def tick(self, now: float | None = None) -> None:
        """One control pass: plan, supervise, reconcile, clocks (when due)."""
        now = time.time() if now is None else now
        self.refresh_plan()
        self.act.supervise(time.monotonic())
        desired = self.desired()
        if desired is not None:
            d = diff(
                desired,
                self.act.actual(),
                sorted(self.act.gpus),
                follow_plan_clocks=self.clock_loop is None,
                can_sleep=self.act.can_sleep,
                repool_in_place=self.externals is not None,
            )
            if d.problems != self.problems:
                for p in d.problems:
                    log.error("plan problem: %s", p)
                self.problems = d.problems
            if d.actions:
                log.info("reconcile: %s", ", ".join(f"{a.kind}:{a.instance_id}" for a in d.actions))
                self.act.apply(d.actions)
                if any(a.kind is ActionKind.SET_POOL for a in d.actions):
                    self._next_clock = now  # the clock loop judges the new pool's types at once
            self._reset_unused()
            floors = {p.id: p.clock_floor_mhz for p in desired if p.clock_floor_mhz}
            if floors != self._floors:
                self._floors = floors
                self._next_clock = now  # a floor raised (or lifted) by the planner applies at once
        if self.clock_loop is not None:
            self.clock_loop.burst(now)  # every tick: a queue takes its instance to the top clock at once
            if now >= self._next_clock:
                self._next_clock = now + self.clock_interval_s
                plan = self.plan
                self.clock_loop.tick(now, plan.serves if plan else None, plan.headroom if plan else 1.0, self._floors)

    def publish(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        notes = [] if self.redis_ok else ["redis was unreachable: running on the last plan"]
        notes += [*self.problems, *([self._bad_plan] if self._bad_plan else []), *self.act.notes(time.monotonic())]
        version = self.plan.version if self.plan is not None else None
        tel, hb = self.telemetry.node_telemetry(now), self.telemetry.heartbeat(now, version, notes)
        try:
            self.store.publish_node(tel, hb, self.telemetry.instance_energy(tel))
            self.act.republish(announce=self._reannounce)  # back after an outage: tell the gateways at once
            self._reannounce = False
        except StoreError as exc:
            self._redis_down(exc)
        else:
            self._redis_up()
        if self.metrics is not None:
            crashes = {i: r.crashes for i, r in list(self.act.instances.items())}
            self.metrics.update(tel, hb, self.redis_ok, crashes)

    def run(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        """Loop until ``stop`` is set: telemetry every ``tick_s`` in its own thread, control passes here."""
        publisher = threading.Thread(target=self._publish_loop, args=(stop, tick_s), name="telemetry", daemon=True)
        publisher.start()
        while not stop.is_set():
            try:
                self.tick()
            except GpuError as exc:
                log.error("GPU error in the control loop: %s", exc)
            stop.wait(tick_s)
        publisher.join(timeout=5)

    def shutdown(self) -> None:
        """Reset the clocks this agent locked, then drain and stop the managed engines."""
        reset = self.clocks.reset_all()
        log.info("reset locked clocks on GPUs %s", reset)
        self.act.shutdown()

    def _publish_loop(self, stop: threading.Event, tick_s: float) -> None:
        while not stop.is_set():
            try:
                self.publish()
            except GpuError as exc:
                log.error("telemetry: %s", exc)
            stop.wait(tick_s)

    def _reset_unused(self) -> None:
        """GPUs no instance uses do not stay locked."""
        used = {g for r in self.act.instances.values() for g in r.planned.gpus}
        for g in self.act.gpus:
            if g not in used and self.clocks.locked_mhz(g) is not None:
                try:
                    self.clocks.reset(g)
                except GpuError as exc:
                    log.error("cannot reset unused GPU %d: %s", g, exc)

    def _redis_down(self, exc: Exception) -> None:
        self._reannounce = True
        if self.redis_ok:
            log.error("redis unavailable (%s): running on the last plan", exc)
        self.redis_ok = False

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.warning("redis is back")
        self.redis_ok = True


def follow_plan(externals: Sequence[PlannedInstance], plan: Plan | None, node: str) -> list[PlannedInstance]:
    """The external servers with the pool, clock and load the plan gives those it names as fixed instances on
    this node (same GPUs and TP); the others as they are."""
    if plan is None:
        return list(externals)
    fixed = set(plan.fixed)
    given = {p.id: p for p in plan.for_node(node) if p.id in fixed}
    out = []
    for e in externals:
        p = given.get(e.id)
        same = p is not None and sorted(p.gpus) == sorted(e.gpus) and p.tp == e.tp
        out.append(
            replace(
                e,
                pool=p.pool,
                sm_clock_mhz=p.sm_clock_mhz,
                load_rps=p.load_rps,
                power_w=p.power_w,
                clock_floor_mhz=p.clock_floor_mhz,
            )
            if p and same
            else e
        )
    return out
