"""The agent's Prometheus metrics (``--metrics-port``): Redis reachability, clock control, the plan
version, per-GPU power/energy/clocks labelled with their source, instance states and restarts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from wattgate.planner.contract import Heartbeat, InstanceState, NodeTelemetry


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.redis_up = Gauge("wattgate_agent_redis_up", "1 when Redis answered the last call", registry=r)
        self.clock_control = Gauge("wattgate_agent_clock_control", "1: may lock clocks; 0: observe-only", registry=r)
        self.plan_version = Gauge("wattgate_agent_plan_version", "version of the plan in force (-1: none)", registry=r)
        gpu = ["gpu", "uuid", "source"]
        self.power = Gauge("wattgate_agent_gpu_power_watts", "GPU power (source: measured|modelled)", gpu, registry=r)
        self.energy = Gauge("wattgate_agent_gpu_energy_joules", "GPU total energy counter", gpu, registry=r)
        self.sm_clock = Gauge("wattgate_agent_gpu_sm_clock_mhz", "current SM clock", ["gpu"], registry=r)
        self.locked = Gauge(
            "wattgate_agent_gpu_locked_clock_mhz", "clock locked by the agent, 0: none", ["gpu"], registry=r
        )
        self.instances = Gauge("wattgate_agent_instances", "instances on this node by state", ["state"], registry=r)
        self.restarts = Gauge(
            "wattgate_agent_engine_restarts", "crashes of each instance's engine", ["instance"], registry=r
        )
        self._server: Any = None

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def update(self, tel: NodeTelemetry, hb: Heartbeat, redis_ok: bool, crashes: Mapping[str, int]) -> None:
        self.redis_up.set(1 if redis_ok else 0)
        self.clock_control.set(1 if hb.clock_control else 0)
        self.plan_version.set(-1 if hb.plan_version is None else hb.plan_version)
        for g in tel.gpus:
            labels = (str(g.index), g.uuid, g.source)
            self.power.labels(*labels).set(g.power_w)
            self.energy.labels(*labels).set(g.energy_j)
            self.sm_clock.labels(str(g.index)).set(g.sm_clock_mhz)
            self.locked.labels(str(g.index)).set(g.locked_clock_mhz or 0)
        counts = Counter(tel.instances.values())
        for state in InstanceState:
            self.instances.labels(state.value).set(counts.get(state.value, 0))
        for iid, n in crashes.items():
            self.restarts.labels(iid).set(n)

    def text(self) -> str:
        return generate_latest(self.registry).decode()
