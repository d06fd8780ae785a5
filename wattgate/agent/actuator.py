"""The actuator: applies reconcile's actions to engines, clocks and the instance registry, and
supervises what runs (crash → restart with exponential backoff; adopt what a previous agent left).

Waits are bounded and end early when the agent is asked to stop. Redis failures never stop an
action: the record is re-published by ``republish()`` once Redis is back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import Engine, EngineError, EngineSpec
from wattgate.agent.errors import AgentError
from wattgate.agent.gpu.base import Gpu, GpuError
from wattgate.agent.reconcile import Action, ActionKind, Actual
from wattgate.agent.store import AgentStore, StoreError
from wattgate.planner.contract import InstanceRecord, InstanceState, PlannedInstance

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Timeouts:
    drain_s: float = 60.0  # in-flight requests get this long to finish before the engine is stopped
    drain_notice_s: float = 1.0  # after marking draining, before counting in-flight: gateways notice
    start_s: float = 900.0  # weights loading can take minutes
    poll_s: float = 0.5
    start_retries: int = 5  # failed starts in a row (never healthy) before the agent gives up on an instance


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
        self.parked: list[Engine] = []  # sleeping vLLM engines kept for a cheap scale-up
        self.redis_ok = True

    # -- state ------------------------------------------------------------------------------------
    def actual(self) -> dict[str, Actual]:
        return {
            i: Actual(i, r.planned.pool, tuple(r.planned.gpus), r.planned.tp, r.planned.sm_clock_mhz)
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

    def _start(self, p: PlannedInstance) -> None:
        gpus = tuple(p.gpus)
        engine = self._wake_parked(p)
        woken = engine is not None
        if engine is None:
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
        if not woken:
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
        r.engine.drain(self.timeouts.drain_s)
        if r.engine.managed and r.engine.sleep():
            self.parked.append(r.engine)
            log.info("%s sleeps (vLLM sleep mode) instead of stopping", r.planned.id)
        else:
            r.engine.stop(0)
            r.engine.close()
        del self.instances[r.planned.id]
        self._remove_record(r.planned.id)
        for g in r.planned.gpus:
            self._reset_clock(g)
        self._save()

    def _wake_parked(self, p: PlannedInstance) -> Engine | None:
        for engine in list(self.parked):
            if engine.spec.gpus == tuple(p.gpus) and engine.spec.tp == p.tp and engine.wake():
                self.parked.remove(engine)
                log.info("%s reuses the sleeping engine of %s (woken up)", p.id, engine.spec.instance_id)
                return engine
            if set(engine.spec.gpus) & set(p.gpus):  # it holds GPUs the new instance needs
                self.parked.remove(engine)
                engine.stop(0)
                engine.close()
        return None

    # -- supervision ------------------------------------------------------------------------------
    def supervise(self, now: float) -> None:
        """Notice crashed engines; restart them when their backoff has passed (``now``: monotonic)."""
        for r in list(self.instances.values()):
            if not r.engine.managed:
                continue
            if r.state in (InstanceState.READY, InstanceState.STARTING) and not r.engine.running():
                starting = r.state is InstanceState.STARTING
                self._failed(r, now, f"the engine process exited ({r.engine.exit_reason()})", starting=starting)
            elif r.state is InstanceState.FAILED and r.restart_at is not None and now >= r.restart_at:
                log.info("restarting %s (crash %d)", r.planned.id, r.crashes)
                r.restart_at = None
                self._set_state(r, InstanceState.STARTING)
                try:
                    r.engine.start()
                    self._wait_healthy(r)
                except EngineError as exc:
                    self._failed(r, time.monotonic(), str(exc), starting=True)
                    continue
                if not self.stop_event.is_set():
                    self._set_state(r, InstanceState.READY)
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
        """What the heartbeat says about failed instances (``now``: monotonic)."""
        out = []
        for r in list(self.instances.values()):  # the telemetry thread calls this: copy first
            if r.state is not InstanceState.FAILED or not r.history:
                continue
            if r.restart_at is None:
                nxt = f"gave up after {r.failed_starts} failed starts; fix it, then restart the agent or re-plan"
            else:
                nxt = f"restart in {max(0.0, r.restart_at - now):.0f} s"
            out.append(f"instance {r.planned.id} failed: {r.history[-1]}; {nxt}")
        return out

    # -- adoption, shutdown -----------------------------------------------------------------------
    def adopt(self) -> list[str]:
        """Take over engines a previous agent started that still serve; stop the ones that do not."""
        try:
            saved = json.loads(self._engines_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): not adopting engines", self._engines_file, exc)
            return []
        adopted = []
        for entry in saved.get("engines", []):
            try:
                p = PlannedInstance(**entry["planned"])
                spec = EngineSpec(
                    **{**entry["spec"], "gpus": tuple(p.gpus), "gpu_uuids": tuple(entry["spec"]["gpu_uuids"])}
                )
                pid = int(entry["pid"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("ignoring a saved engine entry: %s", exc)
                continue
            engine = self._make_engine(spec)
            adopt = getattr(engine, "adopt", None)
            if adopt is None:
                continue
            adopt(pid)
            if engine.running() and engine.healthy():
                r = Running(p, engine, InstanceState.READY, sm_clock_mhz=entry.get("sm_clock_mhz"))
                self.instances[p.id] = r
                self._relock(r)
                self._set_state(r, InstanceState.READY)
                adopted.append(p.id)
                log.info("adopted %s (pid %d) left running by a previous agent", p.id, pid)
            elif engine.running():
                log.warning("stopping %s (pid %d): left by a previous agent but not healthy", p.id, pid)
                engine.stop(0)
        self._save()
        return adopted

    def shutdown(self) -> None:
        """Drain and stop every managed engine; remove every record (unmanaged servers are left serving)."""
        managed = [r for r in self.instances.values() if r.engine.managed]
        for r in managed:
            self._set_state(r, InstanceState.DRAINING)
        if managed:
            time.sleep(self.timeouts.drain_notice_s)
        for r in list(self.instances.values()):
            r.engine.stop(self.timeouts.drain_s)  # an unmanaged server's stop does nothing
            r.engine.close()
            self._remove_record(r.planned.id)
            del self.instances[r.planned.id]
        for engine in self.parked:
            engine.stop(0)
            engine.close()
        self.parked.clear()
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

    def _free_port(self) -> int:
        used = {r.engine.spec.port for r in self.instances.values()} | {e.spec.port for e in self.parked}
        port = self._port_base
        while port in used or not _bindable(self.host, port):
            port += 1
        return port

    def _save(self) -> None:
        entries = [
            {
                "planned": asdict(r.planned),
                "spec": {**asdict(r.engine.spec)},
                "pid": r.engine.pid,
                "sm_clock_mhz": r.sm_clock_mhz,
            }
            for r in self.instances.values()
            if r.engine.managed and r.engine.pid is not None
        ]
        tmp = self._engines_file.with_name(self._engines_file.name + ".tmp")
        try:
            self._engines_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"engines": entries}), encoding="utf-8")
            os.replace(tmp, self._engines_file)
        except OSError as exc:
            raise AgentError(f"cannot write {self._engines_file}: {exc}") from exc


def snap_up(mhz: int, supported: Sequence[int]) -> int:
    """The lowest supported clock at or above ``mhz`` (never slower than planned), else the highest."""
    above = [c for c in supported if c >= mhz]
    return min(above) if above else max(supported)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
