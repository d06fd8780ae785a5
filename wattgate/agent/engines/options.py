"""Engine options from the agent's settings, and the one factory that builds an engine for a spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wattgate.agent.engines.base import Engine, EngineKind, EngineSpec


@dataclass(frozen=True)
class EngineOptions:
    """How this node runs engines. ``command`` replaces the launcher executable (tests, wrappers)."""

    kind: EngineKind
    log_dir: Path
    command: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    cuda_devices_by: str = "uuid"  # uuid | index: how CUDA_VISIBLE_DEVICES names the GPUs
    sleep_mode: bool = False  # vLLM (and sim): --enable-sleep-mode (+ VLLM_SERVER_DEV_MODE=1); standby instances sleep
    stop_grace_s: float = 30.0
    model_file: Path | None = None  # llama.cpp: the GGUF file (served under the instance's model name)
    # simulated engine only
    gpu_state_dir: Path | None = None
    speed: float = 1.0
    env: dict[str, str] = field(default_factory=dict)


def make_engine(options: EngineOptions, spec: EngineSpec) -> Engine:
    from wattgate.agent.engines.external import ExternalEngine  # noqa: PLC0415 (avoid import cycles)
    from wattgate.agent.engines.llamacpp import LlamaCppEngine  # noqa: PLC0415
    from wattgate.agent.engines.simulated import SimulatedEngine  # noqa: PLC0415
    from wattgate.agent.engines.tgi import TgiEngine  # noqa: PLC0415
    from wattgate.agent.engines.vllm import VllmEngine  # noqa: PLC0415

    if options.kind is EngineKind.VLLM:
        return VllmEngine(spec, options)
    if options.kind is EngineKind.TGI:
        return TgiEngine(spec, options)
    if options.kind is EngineKind.LLAMA_CPP:
        return LlamaCppEngine(spec, options)
    if options.kind is EngineKind.SIMULATED:
        return SimulatedEngine(spec, options)
    return ExternalEngine(spec)
