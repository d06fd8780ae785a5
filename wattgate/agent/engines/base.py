"""The engine seam: what the agent needs from an engine instance (start, stop with drain, health,
base URL, in-flight requests), the values that describe one, and a pure ``/metrics`` parser."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from wattgate.agent.errors import AgentError


class EngineError(AgentError):
    """An engine failed to start, become healthy or stop."""


class EngineKind(enum.StrEnum):
    VLLM = "vllm"
    TGI = "tgi"
    LLAMA_CPP = "llama.cpp"
    SIMULATED = "simulated"
    EXTERNAL = "external"


@dataclass(frozen=True)
class EngineSpec:
    """One engine instance as the agent runs it: the plan's instance placed on this node's GPUs."""

    instance_id: str
    model: str
    pool: str
    tp: int
    gpus: tuple[int, ...]  # node-local GPU indices
    gpu_uuids: tuple[str, ...]
    host: str
    port: int
    max_batch: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@runtime_checkable
class Engine(Protocol):
    """A served model instance. External engines are not managed: start and stop do nothing."""

    @property
    def spec(self) -> EngineSpec: ...

    @property
    def kind(self) -> EngineKind: ...

    @property
    def managed(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def base_url(self) -> str: ...

    def start(self) -> None:
        """Launch the server (returns at once; ``healthy()`` says when it serves)."""
        ...

    def running(self) -> bool:
        """The process is alive (always True for external engines)."""
        ...

    def healthy(self) -> bool: ...

    def exit_reason(self) -> str:
        """Why the process ended (exit status, the last error lines of its log), for the heartbeat."""
        ...

    def in_flight(self) -> int | None:
        """Requests running plus waiting, from the engine's /metrics; None when unknown."""
        ...

    def waiting(self) -> int | None:
        """Requests waiting in the engine's queue (not yet running), from its /metrics; None when unknown."""
        ...

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (unknown counts as not yet), at most ``timeout_s``."""
        ...

    def stop(self, drain_timeout_s: float) -> None:
        """Wait (bounded) for in-flight requests to finish, then SIGTERM, then SIGKILL."""
        ...

    @property
    def can_sleep(self) -> bool:
        """The engine was started able to sleep (vLLM with sleep mode on)."""
        ...

    def sleep(self, timeout_s: float) -> None:
        """Put the engine to sleep (weights offloaded, KV cache dropped) and wait, at most ``timeout_s``,
        until it says it sleeps. Raises EngineError saying why when it cannot (drain first: an engine
        may abort what is still running)."""
        ...

    def wake(self, timeout_s: float) -> None:
        """Wake a sleeping engine and wait, at most ``timeout_s``, until it says it is awake; EngineError
        saying why when it does not (the caller then restarts it cold)."""
        ...

    def is_sleeping(self) -> bool | None:
        """Whether the engine sleeps now, as it says; None when it cannot tell (no such endpoint, no answer)."""
        ...

    def close(self) -> None:
        """Release the HTTP client (the process, if any, is left as it is)."""
        ...


# Metric names whose sum is the number of requests an engine holds (running + queued).
IN_FLIGHT_METRICS = {
    EngineKind.VLLM: ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    EngineKind.SIMULATED: ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    EngineKind.EXTERNAL: ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    EngineKind.TGI: ("tgi_batch_current_size", "tgi_queue_size"),
    EngineKind.LLAMA_CPP: ("llamacpp:requests_processing", "llamacpp:requests_deferred"),  # needs --metrics
}

# The queue alone: the second of each pair above.
WAITING_METRICS = {kind: names[1:] for kind, names in IN_FLIGHT_METRICS.items()}


def parse_metrics(text: str, names: Iterable[str]) -> float | None:
    """Sum of the samples of ``names`` (any labels) in Prometheus text; None if none is present."""
    wanted = set(names)
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0 or line[:name_end] not in wanted:
            continue
        rest = line[name_end:]
        if rest.startswith("{"):
            rest = rest[rest.rfind("}") + 1 :]
        try:
            total += float(rest.split()[0])
            seen = True
        except (IndexError, ValueError):
            continue
    return total if seen else None
