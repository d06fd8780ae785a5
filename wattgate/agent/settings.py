"""The agent's one settings object: built once from its parsed options (``agent/cli.py``), validated, passed down."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattgate.agent.clock_policy import (
    DEFAULT_BURST_HOLD_S,
    DEFAULT_BURST_MIN_WAITING,
    DEFAULT_BURST_MIN_WAITING_FIXED,
)
from wattgate.agent.engines.base import EngineKind
from wattgate.agent.errors import SettingsError
from wattgate.profiles.classes import POOL_NAMES
from wattgate.settings.common import DEFAULT_REDIS_URL, simulated_gpu_count

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


EXTERNAL_ENGINES = {"vllm": "vllm", "tgi": "tgi", "llama.cpp": "llama.cpp", "sim": "simulated"}  # engine= -> kind


@dataclass(frozen=True)
class ExternalInstance:
    """An existing server the agent does not manage: ``id=e0,url=http://h:8000,gpus=0:1`` and optionally
    ``pool=SS`` (what it serves until a plan gives it a pool; none: every type), ``model=NAME`` (the name
    clients send; default ``--model``) and ``engine=vllm|tgi|llama.cpp|sim`` (what serves it: its metrics' names)."""

    id: str
    url: str
    pool: str  # "" none: every request type until the plan assigns one
    gpus: tuple[int, ...]
    model: str = ""
    engine: str = "vllm"  # vllm | tgi | llama.cpp | simulated


@dataclass(frozen=True)
class AgentSettings:
    redis_url: str
    node: str
    model: str
    gpu_kind: str = "nvml"  # nvml | simulated:N
    gpu_indices: tuple[int, ...] | None = None  # nvml: manage only these GPUs
    engine: EngineKind = EngineKind.VLLM
    redis_prefix: str = "wg"
    host: str = "127.0.0.1"
    port_base: int = 8100
    max_batch: int = 256
    state_dir: Path = field(default_factory=lambda: default_state_dir("agent"))
    observe_only: bool = False
    engine_command: tuple[str, ...] = ()
    engine_args: tuple[str, ...] = ()
    model_file: Path | None = None  # llama.cpp: the GGUF file served as --model
    cuda_devices_by: str = "uuid"
    sleep_mode: bool = False
    profile: str = ""
    gpu_state_dir: Path | None = None
    sim_speed: float = 1.0
    externals: tuple[ExternalInstance, ...] = ()
    ttft_s: tuple[float, float, float] = (0.25, 0.5, 1.5)
    tbt_s: float = 0.15
    tick_s: float = 1.0
    clock_interval_s: float = 5.0
    burst_hold_s: float = DEFAULT_BURST_HOLD_S  # the clock loop's burst rule (agent/clock_policy.burst_until)
    burst_min_waiting: int = DEFAULT_BURST_MIN_WAITING
    burst_min_waiting_fixed: int = DEFAULT_BURST_MIN_WAITING_FIXED
    load_window_s: int = 10
    drain_timeout_s: float = 60.0
    start_timeout_s: float = 900.0
    stop_grace_s: float = 30.0
    start_retries: int = 5
    sleep_timeout_s: float = 120.0
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_host: str = "0.0.0.0"

    @property
    def sim_gpu_count(self) -> int:
        return simulated_gpu_count(self.gpu_kind)

    @property
    def clock_state_file(self) -> Path:
        return self.state_dir / "clock-locks.json"

    @property
    def engines_file(self) -> Path:
        return self.state_dir / "engines.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def default_state_dir(node: str) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/wattgate") / node
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "wattgate" / node


def parse_external(text: str) -> ExternalInstance:
    usage = "expected id=NAME,url=http://HOST:PORT,gpus=0:1[,pool=SS][,model=NAME][,engine=vllm|tgi|llama.cpp|sim]"
    try:
        parts = dict(p.split("=", 1) for p in text.split(","))
        gpus = tuple(int(g) for g in parts["gpus"].split(":") if g != "")
        engine = EXTERNAL_ENGINES.get(parts.get("engine", "vllm").lower(), "")
        ext = ExternalInstance(
            parts["id"], parts["url"].rstrip("/"), parts.get("pool", "").upper(), gpus, parts.get("model", ""), engine
        )
    except (KeyError, ValueError) as exc:
        raise SettingsError(f"--external {text!r}: {usage}") from exc
    unknown = sorted(set(parts) - {"id", "url", "gpus", "pool", "model", "engine"})
    if unknown:
        raise SettingsError(f"--external {text!r}: unknown key(s) {', '.join(unknown)}; {usage}")
    if ext.pool and ext.pool not in POOL_NAMES:
        raise SettingsError(f"--external {text!r}: pool must be one of {', '.join(POOL_NAMES)}")
    if not ext.engine:
        raise SettingsError(f"--external {text!r}: engine must be one of {', '.join(EXTERNAL_ENGINES)}")
    if not ext.gpus or len(set(ext.gpus)) != len(ext.gpus):
        raise SettingsError(f"--external {text!r}: gpus must list the server's GPU indices once each, e.g. 0:1")
    if not ext.url.startswith(("http://", "https://")):
        raise SettingsError(f"--external {text!r}: url must start with http:// or https://")
    return ext


def validate(s: AgentSettings) -> AgentSettings:
    """The checks between options (each option's own were done when it was parsed); SettingsError names them."""
    checks: list[tuple[bool, str]] = [
        (bool(_NODE_RE.match(s.node)), f"--node {s.node!r}: letters, digits, '.', '_', '-' (max 63)"),
        (
            s.gpu_kind == "nvml" or s.sim_gpu_count > 0,
            f"--gpu-kind {s.gpu_kind!r}: the agent needs nvml or simulated:N (N simulated GPUs)",
        ),
        (
            not s.externals or s.engine is EngineKind.EXTERNAL,
            "--external servers run on a node of external servers only: leave --engine out or give --engine external",
        ),
        (bool(s.model) or s.engine is EngineKind.EXTERNAL, "--model is required to start engines"),
        (s.engine is not EngineKind.EXTERNAL or bool(s.externals), "--engine external needs at least one --external"),
        (
            len({e.id for e in s.externals}) == len(s.externals)
            and len({g for e in s.externals for g in e.gpus}) == sum(len(e.gpus) for e in s.externals),
            "--external: each server needs its own id and its own GPUs",
        ),
        (s.clock_interval_s >= s.tick_s, "--clock-interval-s must be >= --tick-s"),
        (s.engine is not EngineKind.LLAMA_CPP or s.model_file is not None, "--engine llama.cpp needs --model-file"),
        (
            not s.sleep_mode or s.engine in (EngineKind.VLLM, EngineKind.SIMULATED),
            "--sleep-mode needs --engine vllm (vLLM's sleep mode) or simulated",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)
    return s


def from_values(v: Any) -> AgentSettings:
    """``AgentSettings`` from the parsed options of ``wattgate agent`` (``wattgate.settings``)."""
    return validate(
        AgentSettings(
            redis_url=v.redis_url or DEFAULT_REDIS_URL,
            node=v.node,
            model=v.model,
            gpu_kind=v.gpu_kind,
            gpu_indices=tuple(v.gpu_indices) or None,
            # --external alone makes a node of external servers; without either the agent starts vLLM engines
            engine=EngineKind(v.engine or ("external" if v.externals else "vllm")),
            redis_prefix=v.redis_prefix,
            host=v.host,
            port_base=v.port_base,
            max_batch=v.max_batch,
            state_dir=v.state_dir or default_state_dir(v.node),
            observe_only=v.observe_only,
            engine_command=tuple(v.engine_command),
            engine_args=tuple(v.engine_args),
            model_file=v.model_file,
            cuda_devices_by=v.cuda_devices_by,
            sleep_mode=v.sleep_mode,
            profile=v.profile,
            gpu_state_dir=v.gpu_state_dir,
            sim_speed=v.sim_speed,
            externals=tuple(v.externals),
            ttft_s=v.ttft_s,
            tbt_s=v.tbt_s,
            tick_s=v.tick_s,
            clock_interval_s=v.clock_interval_s,
            burst_hold_s=v.burst_hold_s,
            burst_min_waiting=v.burst_min_waiting,
            burst_min_waiting_fixed=v.burst_min_waiting_fixed,
            load_window_s=math.ceil(v.load_window_s),
            drain_timeout_s=v.drain_timeout_s,
            start_timeout_s=v.start_timeout_s,
            stop_grace_s=v.stop_grace_s,
            start_retries=v.start_retries,
            sleep_timeout_s=v.sleep_timeout_s,
            metrics_port=v.metrics_port,
            metrics_host=v.metrics_host,
        )
    )


def from_args(args: Any) -> AgentSettings:
    """Settings from the argparse namespace of ``wattgate agent`` (and the process's environment)."""
    from wattgate.agent.cli import COMMAND  # noqa: PLC0415  (the option list lives with the command)
    from wattgate.settings.model import SettingsError as OptionError  # noqa: PLC0415
    from wattgate.settings.parse import given_options, known_env, resolve  # noqa: PLC0415

    try:
        values = resolve(COMMAND, given_options(COMMAND, args), os.environ, known_env=known_env())
    except OptionError as exc:
        raise SettingsError(str(exc)) from None
    return from_values(values)
