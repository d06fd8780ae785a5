"""Build the agent once from its settings (GPUs, clock controller, store, engines) and run it until
SIGTERM/SIGINT; then reset locked clocks, drain and stop the managed engines, exit 0."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from wattgate.agent.actuator import Actuator
from wattgate.agent.agent import Agent
from wattgate.agent.clock_loop import ClockLoop
from wattgate.agent.clock_policy import BurstRule
from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import Engine, EngineKind, EngineSpec
from wattgate.agent.engines.external import ExternalEngine
from wattgate.agent.engines.options import EngineOptions, make_engine
from wattgate.agent.errors import SettingsError, StartupError
from wattgate.agent.gpu.base import Gpu
from wattgate.agent.metrics import AgentMetrics
from wattgate.agent.running import Timeouts
from wattgate.agent.settings import AgentSettings
from wattgate.agent.store import AgentStore, StoreError
from wattgate.agent.telemetry import Telemetry
from wattgate.listen import port_free
from wattgate.planner.contract import Keys, PlannedInstance, UnmanagedInstance
from wattgate.profiles.builtin import profile_or_default
from wattgate.profiles.classes import LengthClass, ProfilesError, SloTargets
from wattgate.profiles.table import Profile
from wattgate.settings.common import redact_url

log = logging.getLogger(__name__)


def open_gpus(s: AgentSettings, stack: ExitStack) -> list[Gpu]:
    """The node's GPUs, built once. NVML is shut down when ``stack`` closes."""
    if s.sim_gpu_count:
        try:  # the emulator's module, imported by name: GPU hosts never need it
            sim = importlib.import_module("wattgate.agent.gpu.simulated")
        except ModuleNotFoundError as exc:
            raise SettingsError(
                "--gpu-kind simulated:N needs wattgate.agent.gpu.simulated, which is not installed"
            ) from exc
        state_dir = s.gpu_state_dir or s.state_dir / "sim-gpus"
        return list(sim.open_simulated_gpus(range(s.sim_gpu_count), state_dir))
    from wattgate.agent.gpu.nvml import NvmlLibrary  # noqa: PLC0415 (only NVML hosts need pynvml)

    lib = stack.enter_context(NvmlLibrary())
    return list(lib.gpus(list(s.gpu_indices) if s.gpu_indices else None))


def load_agent_profile(spec: str, simulated: bool) -> Profile | None:
    """``--profile``: a builtin name or a file, for the clock loop. Without one, a node of simulated
    engines (the serving model) uses the shipped default; real engines get no clock loop rather than
    a profile measured for another model."""
    try:
        return profile_or_default(spec) if spec or simulated else None
    except ProfilesError as exc:
        raise SettingsError(f"--profile: {exc}") from exc


def engine_factory(s: AgentSettings) -> Callable[[EngineSpec], Engine]:
    options = EngineOptions(
        kind=s.engine,
        log_dir=s.log_dir,
        command=s.engine_command,
        extra_args=s.engine_args,
        model_file=s.model_file,
        cuda_devices_by=s.cuda_devices_by,
        sleep_mode=s.sleep_mode,
        stop_grace_s=s.stop_grace_s,
        gpu_state_dir=s.gpu_state_dir or (s.state_dir / "sim-gpus" if s.sim_gpu_count else None),
        speed=s.sim_speed,
    )
    if s.engine is EngineKind.EXTERNAL:
        externals = {e.id: e for e in s.externals}

        def external(spec: EngineSpec) -> Engine:
            e = externals.get(spec.instance_id)
            if e is None:
                return ExternalEngine(spec)
            return ExternalEngine(replace(spec, model=e.model or spec.model), e.url, EngineKind(e.engine))

        return external
    return lambda spec: make_engine(options, spec)


def external_plan(s: AgentSettings, gpus: list[Gpu]) -> list[PlannedInstance] | None:
    """The ``--external`` servers as planned instances at their own pool (the plan may give others) and no
    clock (0: none locked until the plan or the clock loop picks one)."""
    if s.engine is not EngineKind.EXTERNAL:
        return None
    known = {g.index for g in gpus}
    for e in s.externals:
        if not set(e.gpus) <= known:
            raise SettingsError(f"--external {e.id}: GPUs {list(e.gpus)} are not on this node {sorted(known)}")
    return [PlannedInstance(e.id, e.pool, s.node, list(e.gpus), len(e.gpus), 0, 0.0, 0.0) for e in s.externals]


def check_start(s: AgentSettings, store: AgentStore) -> None:
    """Before any GPU or engine work: Redis answers and the metrics port is free, or one line and exit 1."""
    try:
        store.ping()
    except StoreError as exc:
        raise StartupError(f"cannot reach Redis at {redact_url(s.redis_url)}: {exc}") from exc
    if s.metrics_port:
        why = port_free(s.metrics_host, s.metrics_port)
        if why is not None:
            raise StartupError(f"--metrics-port: {why}")


def unmanaged(s: AgentSettings) -> list[UnmanagedInstance]:
    """What the heartbeat tells the planner of the ``--external`` servers (their pool as they start)."""
    return [
        UnmanagedInstance(e.id, len(e.gpus), list(e.gpus), e.model or s.model, e.engine, e.pool) for e in s.externals
    ]


def build(s: AgentSettings, stack: ExitStack, stop: threading.Event) -> Agent:
    profile = load_agent_profile(s.profile, s.engine is EngineKind.SIMULATED)  # bad input fails before any GPU work
    store = AgentStore(s.redis_url, Keys(s.redis_prefix))
    stack.callback(store.close)
    check_start(s, store)
    gpus = open_gpus(s, stack)
    clocks = ClockController(gpus, s.clock_state_file, observe_only=s.observe_only)
    recovered = clocks.recover()
    if recovered:
        log.warning("start-up: reset GPUs %s that a previous agent left locked", recovered)
    timeouts = Timeouts(
        drain_s=s.drain_timeout_s, start_s=s.start_timeout_s, start_retries=s.start_retries, sleep_s=s.sleep_timeout_s
    )
    act = Actuator(
        node=s.node,
        model=s.model or "external",
        gpus=gpus,
        clocks=clocks,
        store=store,
        make_engine=engine_factory(s),
        engines_file=s.engines_file,
        host=s.host,
        port_base=s.port_base,
        max_batch=s.max_batch,
        timeouts=timeouts,
        stop_event=stop,
        sleep_mode=s.sleep_mode,
    )
    act.adopt()
    slo = SloTargets(dict(zip((LengthClass.S, LengthClass.M, LengthClass.L), s.ttft_s, strict=True)), s.tbt_s)
    loop = (
        ClockLoop(
            act,
            profile,
            slo,
            store,
            s.load_window_s,
            burst=BurstRule(s.burst_hold_s, s.burst_min_waiting, s.burst_min_waiting_fixed),
        )
        if profile is not None
        else None
    )
    if loop is None:
        log.warning("no --profile: clocks stay at the plan's clock (no instance-level clock loop)")
    metrics = AgentMetrics()
    if s.metrics_port:
        try:
            metrics.serve(s.metrics_port, s.metrics_host)
        except OSError as exc:
            raise StartupError(f"--metrics-port: cannot listen on {s.metrics_host}:{s.metrics_port}: {exc}") from exc
        stack.callback(metrics.close)
    return Agent(
        metrics=metrics,
        node=s.node,
        actuator=act,
        clocks=clocks,
        store=store,
        telemetry=Telemetry(s.node, gpus, clocks, act, managed=not s.externals, unmanaged=unmanaged(s)),
        clock_loop=loop,
        externals=external_plan(s, gpus),
        clock_interval_s=s.clock_interval_s,
    )


def run(s: AgentSettings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: resetting clocks, draining, stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ExitStack() as stack:
            agent = build(s, stack, stop)
            log.info(
                "agent %s: %d GPU(s), engine %s, clock control %s",
                s.node,
                len(agent.act.gpus),
                s.engine,
                "on" if agent.clocks.clock_control else "off (observe-only)",
            )
            try:
                agent.run(stop, s.tick_s)
            finally:
                agent.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
