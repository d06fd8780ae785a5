"""An external engine: a server the user already runs. Never started or stopped by the agent; the
agent only locks its GPUs' clocks, reads its /metrics and reports telemetry."""

from __future__ import annotations

from wattgate.agent.engines.base import EngineKind, EngineSpec
from wattgate.agent.engines.http_engine import HttpEngine


class ExternalEngine(HttpEngine):
    kind_value = EngineKind.EXTERNAL
    managed_value = False

    def __init__(self, spec: EngineSpec, base_url: str | None = None, served_by: EngineKind = EngineKind.VLLM) -> None:
        super().__init__(spec, (base_url or spec.base_url).rstrip("/"))
        self.served_by = served_by  # what the server runs: its /metrics names differ (vLLM or TGI)

    @property
    def metrics_kind(self) -> EngineKind:
        return self.served_by

    def start(self) -> None:
        return None

    def running(self) -> bool:
        return True

    def drain(self, timeout_s: float) -> bool:
        return True  # not ours to stop: nothing to wait for

    def stop(self, drain_timeout_s: float) -> None:
        return None
