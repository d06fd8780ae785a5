"""The actuator: applies reconcile's actions to engines, clocks and the instance registry, and
supervises what runs (crash → restart with exponential backoff; adopt what a previous agent left).

Warm standby (vLLM sleep mode): an instance put to sleep is drained first (in-flight requests finish,
at most ``drain_s``), then asleep (its record says so; its GPUs are locked at their lowest clock, as idle
ones are); woken, it is health-checked and registered ready again, same process. A wake-up that fails
is a failure like a crash (the heartbeat says why) and the engine is restarted cold; a sleep that fails
stops the engine and turns sleeping off for this node until the agent restarts (standby instances are
then kept stopped, and the heartbeat says ``sleep_mode: false`` and why).

Waits are bounded and end early when the agent is asked to stop. Redis failures never stop an
action: the record is re-published by ``republish()`` once Redis is back.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import Engine, EngineError, EngineSpec
from wattgate.agent.engines_file import SavedEngine, read_engines, write_engines
from wattgate.agent.gpu.base import Gpu, GpuError
from wattgate.agent.reconcile import Action, ActionKind, Actual
from wattgate.agent.running import Running, Timeouts, instance_notes, snap_up
from wattgate.agent.store import AgentStore, StoreError
from wattgate.planner.contract import InstanceRecord, InstanceState, PlannedInstance

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 60.0


class Actuator:
    def __init__(
        self,
        *,
        node: str,
        model: str,
        gpus: Sequence[Gpu],
        clocks: ClockController,
        store: AgentStore | None,
        make_engine: Callable[[EngineSpec], Engine],
        engines_file: Path,
        host: str = "127.0.0.1",
        port_base: int = 8100,
        max_batch: int = 256,
        timeouts: Timeouts | None = None,
        stop_event: threading.Event | None = None,
        sleep_mode: bool = False,
    ) -> None:
        self.node, self.model, self.host = node, model, host
        self.gpus: dict[int, Gpu] = {g.index: g for g in gpus}
        self.clocks = clocks
        self.store = store
        self._make_engine = make_engine
        self._engines_file = engines_file
        self._port_base, self._max_batch = port_base, max_batch
        self.timeouts = timeouts or Timeouts()
        self.stop_event = stop_event or threading.Event()
        self.instances: dict[str, Running] = {}
        self.sleep_mode = sleep_mode  # this node's engines start able to sleep (vLLM --enable-sleep-mode)
        self.sleep_failure = ""  # why sleeping is off since a sleep failed ("": it never did)
        self.redis_ok = True

    @property
    def can_sleep(self) -> bool:
        """Standby instances can be run here: engines start able to sleep and no sleep has failed."""
        return self.sleep_mode and not self.sleep_failure

    # -- state ------------------------------------------------------------------------------------
    def actual(self) -> dict[str, Actual]:
        return {
            i: Actual(
                i,
                r.planned.pool,
                tuple(r.planned.gpus),
                r.planned.tp,
                r.planned.clock_target_mhz,
                r.state,
                r.planned.standby,
            )
            for i, r in self.instances.items()
        }

    def record(self, r: Running) -> InstanceRecord:
        return InstanceRecord(
            id=r.planned.id,
            base_url=r.engine.base_url,
            model=r.engine.spec.model,
            pool=r.planned.pool,
            node=self.node,
            state=r.state.value,
            tp=r.planned.tp,
            gpus=list(r.planned.gpus),
            sm_clock_mhz=r.sm_clock_mhz,
            max_concurrency=r.engine.spec.max_batch,
            engine=r.engine.kind.value,
            updated_at=time.time(),
        )

    # -- actions ----------------------------------------------------------------------------------
    def apply(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if self.stop_event.is_set():
                return
            try:
                self._apply(a)
            except (EngineError, GpuError) as exc:
                log.error("%s %s failed: %s", a.kind, a.instance_id, exc)
                r = self.instances.get(a.instance_id)
                if r is not None and a.kind in (ActionKind.START, ActionKind.WAIT_HEALTHY):
                    self._failed(r, time.monotonic(), str(exc), starting=True)

    def _apply(self, a: Action) -> None:
        r = self.instances.get(a.instance_id)
        if a.kind is ActionKind.DRAIN and r is not None:
            self._set_state(r, InstanceState.DRAINING)
            self.stop_event.wait(self.timeouts.drain_notice_s if r.engine.managed else 0)
        elif a.kind is ActionKind.STOP and r is not None:
            self._stop(r)
        elif a.kind is ActionKind.SET_CLOCK and a.sm_clock_mhz:
            mhz = a.sm_clock_mhz
            for g in a.gpus:
                mhz = snap_up(a.sm_clock_mhz, self.gpus[g].supported_sm_clocks_mhz())
                self.clocks.set_clock(g, mhz)
            if r is not None and a.planned is not None:  # a kept instance re-clocked by a new plan
                r.planned = a.planned
                if self.clocks.clock_control:
                    self.set_clock_record(r, mhz)
        elif a.kind is ActionKind.SET_POOL and r is not None and a.planned is not None:
            log.info(
                "%s now serves pool %s (was %s): a routing change, nothing restarts",
                r.planned.id,
                a.planned.pool,
                r.planned.pool,
            )
            r.planned = a.planned
            self._put(self.record(r))
        elif a.kind is ActionKind.START and a.planned is not None:
            self._start(a.planned)
        elif a.kind is ActionKind.WAIT_HEALTHY and r is not None and r.state is InstanceState.STARTING:
            self._wait_healthy(r)
        elif a.kind is ActionKind.REGISTER and r is not None and r.state is InstanceState.STARTING:
            self._set_state(r, InstanceState.READY)
        elif a.kind is ActionKind.SLEEP and r is not None and a.planned is not None:
            self._to_sleep(r, a.planned)
        elif a.kind is ActionKind.WAKE and r is not None and a.planned is not None:
            self._wake(r, a.planned)

    def _start(self, p: PlannedInstance) -> None:
        gpus = tuple(p.gpus)
        spec = EngineSpec(
            instance_id=p.id,
            model=self.model,
            pool=p.pool,
            tp=p.tp,
            gpus=gpus,
            gpu_uuids=tuple(self.gpus[g].uuid for g in gpus),
            host=self.host,
            port=self._free_port(),
            max_batch=self._max_batch,
        )
        engine = self._make_engine(spec)
        # Known before it is launched: a launch that fails becomes FAILED with backoff, not a retry every tick.
        r = Running(p, engine, InstanceState.STARTING, sm_clock_mhz=self.clocks.locked_mhz(gpus[0]))
        self.instances[p.id] = r
        self._set_state(r, InstanceState.STARTING)
        engine.start()
        self._save()

    def _wait_healthy(self, r: Running) -> None:
        deadline = time.monotonic() + self.timeouts.start_s
        while not self.stop_event.is_set():
            if r.engine.healthy():
                return
            if not r.engine.running():
                raise EngineError(f"{r.planned.id} exited while starting ({r.engine.exit_reason()})")
            if time.monotonic() >= deadline:
                r.engine.stop(0)
                raise EngineError(f"{r.planned.id} not healthy after {self.timeouts.start_s:.0f} s")
            self.stop_event.wait(self.timeouts.poll_s)

    def _stop(self, r: Running) -> None:
        if r.state is not InstanceState.ASLEEP:  # a sleeping engine holds no request
            r.engine.drain(self.timeouts.drain_s)
        self._remove(r)

    def _remove(self, r: Running) -> None:
        """Stop the engine (no drain), drop its record, release its GPUs' clocks."""
        r.engine.stop(0)
        r.engine.close()
        del self.instances[r.planned.id]
        self._remove_record(r.planned.id)
        for g in r.planned.gpus:
            self._reset_clock(g)
        self._save()

    # -- warm standby (vLLM sleep mode) ---------------------------------------------------------------
    def _to_sleep(self, r: Running, planned: PlannedInstance) -> None:
        """Put a serving (or just started) instance to sleep after draining it; one that neither serves nor
        starts (asleep, failed) only takes the plan's wish, which its restart follows."""
        r.planned = planned
        if r.state is InstanceState.READY:  # no DRAIN action before it: drain now all the same
            self._set_state(r, InstanceState.DRAINING)
            self.stop_event.wait(self.timeouts.drain_notice_s)
        if r.state not in (InstanceState.DRAINING, InstanceState.STARTING):
            self._save()
            return
        if r.state is InstanceState.DRAINING and not r.engine.drain(self.timeouts.drain_s):
            log.warning(
                "%s: going to sleep with requests still in flight after %.0f s", planned.id, self.timeouts.drain_s
            )
        if not self.can_sleep:  # a sleep failed meanwhile: kept stopped, as standby is without sleep mode
            log.warning("%s: sleeping is off on this node (%s): stopped instead", planned.id, self.sleep_failure)
            self._remove(r)
            return
        t0 = time.monotonic()
        try:
            r.engine.sleep(self.timeouts.sleep_s)
        except EngineError as exc:
            self.sleep_failure = str(exc)  # it names the instance
            log.error(
                "%s could not sleep (%s): stopped instead; no sleep on this node until the agent restarts",
                planned.id,
                exc,
            )
            self._remove(r)
            return
        log.info("%s asleep in %.2f s (measured): weights offloaded to CPU memory", planned.id, time.monotonic() - t0)
        self._lock_lowest(r)
        self._set_state(r, InstanceState.ASLEEP)
        self._save()

    def _wake(self, r: Running, planned: PlannedInstance) -> None:
        """Wake a sleeping instance (state ``starting`` until health and registration follow); a wake-up that
        fails restarts the engine cold. One not asleep only takes the plan's wish."""
        r.planned = planned
        if r.state is not InstanceState.ASLEEP:
            self._save()
            return
        self._set_state(r, InstanceState.STARTING)
        t0 = time.monotonic()
        try:
            r.engine.wake(self.timeouts.sleep_s)
        except EngineError as exc:
            r.wake_failed = (time.monotonic(), str(exc))
            r.engine.stop(0)  # what is left of it goes; a cold start follows
            self._failed(r, time.monotonic(), f"wake_up failed, restarting cold: {exc}")
            self._save()
            return
        log.info("%s awake in %.2f s (measured)", planned.id, time.monotonic() - t0)
        self._save()

    def _lock_lowest(self, r: Running) -> None:
        """A sleeping instance's GPUs idle: lock them at their lowest clock, as the clock loop does idle ones."""
        try:
            for g in r.planned.gpus:
                mhz = min(self.gpus[g].supported_sm_clocks_mhz())
                self.clocks.set_clock(g, mhz)
                if self.clocks.clock_control:
                    r.sm_clock_mhz = mhz
        except GpuError as exc:
            log.error("%s: cannot lock the lowest clock while asleep: %s", r.planned.id, exc)

    # -- supervision ------------------------------------------------------------------------------
    def supervise(self, now: float) -> None:
        """Notice crashed engines; restart them when their backoff has passed (``now``: monotonic)."""
        for r in list(self.instances.values()):
            if not r.engine.managed:
                continue
            if (
                r.state in (InstanceState.READY, InstanceState.STARTING, InstanceState.ASLEEP)
                and not r.engine.running()
            ):
                starting = r.state is InstanceState.STARTING
                self._failed(r, now, f"the engine process exited ({r.engine.exit_reason()})", starting=starting)
            elif r.state is InstanceState.FAILED and r.restart_at is not None and now >= r.restart_at:
                log.info("restarting %s (crash %d)", r.planned.id, r.crashes)
                r.restart_at = None
                self._move_if_port_taken(r)
                self._set_state(r, InstanceState.STARTING)
                try:
                    r.engine.start()
                    self._wait_healthy(r)
                except EngineError as exc:
                    self._failed(r, time.monotonic(), str(exc), starting=True)
                    continue
                if r.planned.standby and not self.stop_event.is_set():  # on standby: back to sleep, as planned
                    self._to_sleep(r, r.planned)
                elif not self.stop_event.is_set():
                    self._set_state(r, InstanceState.READY)
                if r.planned.id in self.instances:
                    self._save()

    def _failed(self, r: Running, now: float, why: str, *, starting: bool = False) -> None:
        """Mark ``r`` failed and schedule its restart with exponential backoff; after ``start_retries``
        starts in a row that never became healthy (a bad model path, a wrong flag), give up instead of
        looping: the heartbeat says why until the plan drops the instance or the agent restarts."""
        r.crashes += 1
        r.failed_starts = r.failed_starts + 1 if starting else 0
        r.history.append(why)
        if starting and r.failed_starts >= self.timeouts.start_retries:
            r.restart_at = None
            log.error("%s failed to start %d times in a row (%s): giving up", r.planned.id, r.failed_starts, why)
        else:
            backoff = min(MAX_BACKOFF_S, 2.0 ** (r.crashes - 1))
            r.restart_at = now + backoff
            log.error("%s failed (%s): restart in %.0f s", r.planned.id, why, backoff)
        self._set_state(r, InstanceState.FAILED)

    def notes(self, now: float) -> list[str]:
        """What the heartbeat says about instances in trouble and sleeping turned off (``now``: monotonic)."""
        return instance_notes(list(self.instances.values()), self.sleep_failure, now)  # copy: telemetry thread

    # -- adoption, shutdown -----------------------------------------------------------------------
    def adopt(self) -> list[str]:
        """Take over engines a previous agent started that still serve; stop the ones that do not."""
        adopted = []
        for saved in read_engines(self._engines_file):
            p, pid = saved.planned, saved.pid
            engine = self._make_engine(saved.spec)
            adopt = getattr(engine, "adopt", None)
            if adopt is None:
                continue
            adopt(pid)
            if engine.running() and engine.healthy():  # vLLM's /health answers 200 while it sleeps too
                asleep = engine.is_sleeping()  # what the engine says beats what the file says
                state = InstanceState.ASLEEP if (saved.asleep if asleep is None else asleep) else InstanceState.READY
                r = Running(p, engine, state, sm_clock_mhz=saved.sm_clock_mhz)
                self.instances[p.id] = r
                self._relock(r)
                self._set_state(r, state)
                adopted.append(p.id)
                log.info("adopted %s (pid %d, %s) left running by a previous agent", p.id, pid, state)
            elif engine.running():
                log.warning("stopping %s (pid %d): left by a previous agent but not healthy", p.id, pid)
                engine.stop(0)
        self._save()
        return adopted

    def shutdown(self) -> None:
        """Drain and stop every managed engine; remove every record (unmanaged servers are left serving)."""
        managed = [r for r in self.instances.values() if r.engine.managed]
        serving = {r.planned.id for r in managed if r.state is not InstanceState.ASLEEP}  # asleep: no drain
        for i in serving:
            self._set_state(self.instances[i], InstanceState.DRAINING)
        if serving:
            time.sleep(self.timeouts.drain_notice_s)
        for r in list(self.instances.values()):
            r.engine.stop(self.timeouts.drain_s if r.planned.id in serving else 0)  # an unmanaged one's does nothing
            r.engine.close()
            self._remove_record(r.planned.id)
            del self.instances[r.planned.id]
        self._save()

    # -- helpers ----------------------------------------------------------------------------------
    def republish(self, announce: bool = False) -> None:
        """Re-write every record: restores the registry after Redis comes back (``announce``: with an event
        per record, so gateways see them at once rather than at their next full registry read)."""
        for r in list(self.instances.values()):  # the telemetry thread calls this: copy first
            self._put(self.record(r), announce=announce)

    def set_clock_record(self, r: Running, mhz: int) -> None:
        if r.sm_clock_mhz != mhz:
            r.sm_clock_mhz = mhz
            self._put(self.record(r))

    def _set_state(self, r: Running, state: InstanceState) -> None:
        r.state = state
        if state is InstanceState.READY:
            r.failed_starts = 0
        self._put(self.record(r))

    def _put(self, rec: InstanceRecord, announce: bool = True) -> None:
        def op(store: AgentStore) -> None:
            store.put_instance(rec, announce=announce)

        self._registry(op)

    def _remove_record(self, instance_id: str) -> None:
        def op(store: AgentStore) -> None:
            store.remove_instance(instance_id)

        self._registry(op)

    def _registry(self, op: Callable[[AgentStore], None]) -> None:
        if self.store is None:
            return
        try:
            op(self.store)
            if not self.redis_ok:
                log.warning("redis is back")
            self.redis_ok = True
        except StoreError as exc:
            if self.redis_ok:
                log.error("redis unavailable (%s): running on the last plan, will re-register", exc)
            self.redis_ok = False

    def _relock(self, r: Running) -> None:
        """Re-apply an adopted instance's clock (start-up reset every lock of the crashed agent)."""
        mhz = r.sm_clock_mhz or r.planned.sm_clock_mhz
        try:
            for g in r.planned.gpus:
                self.clocks.set_clock(g, snap_up(mhz, self.gpus[g].supported_sm_clocks_mhz()))
        except GpuError as exc:
            log.error("%s: cannot re-lock %d MHz: %s", r.planned.id, mhz, exc)

    def _reset_clock(self, gpu: int) -> None:
        try:
            self.clocks.reset(gpu)
        except GpuError as exc:
            log.error("cannot reset GPU %d: %s", gpu, exc)

    def _move_if_port_taken(self, r: Running) -> None:
        """A managed engine whose port another process took while it was down (another agent's engine starting on
        this host, any server) restarts on a free port: on the same one it would fail every retry."""
        spec = r.engine.spec
        if not r.engine.managed or _bindable(spec.host, spec.port):
            return
        port = self._free_port()
        log.warning("%s: port %d is taken by another process, restarting on %d", r.planned.id, spec.port, port)
        r.engine.close()
        r.engine = self._make_engine(dataclasses.replace(spec, port=port))

    def _free_port(self) -> int:
        used = {r.engine.spec.port for r in self.instances.values()}
        port = self._port_base
        while port in used or not _bindable(self.host, port):
            port += 1
        return port

    def _save(self) -> None:
        saved = []
        for r in self.instances.values():
            pid = r.engine.pid
            if r.engine.managed and pid is not None:
                asleep = r.state is InstanceState.ASLEEP
                saved.append(SavedEngine(r.planned, r.engine.spec, pid, r.sm_clock_mhz, asleep))
        write_engines(self._engines_file, saved)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
