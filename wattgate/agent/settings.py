"""The agent's one settings object: parsed once from the command line, validated, passed down."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattgate.agent.engines.base import EngineKind
from wattgate.agent.errors import SettingsError
from wattgate.profiles.classes import POOL_NAMES

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
    gpus: str = "nvml"  # nvml | sim:N
    gpu_indices: tuple[int, ...] | None = None  # nvml: manage only these GPUs
    engine: EngineKind = EngineKind.VLLM
    prefix: str = "wg"
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
    tbt_s: float = 0.2
    tick_s: float = 1.0
    clock_interval_s: float = 5.0
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
        return int(self.gpus.split(":", 1)[1]) if self.gpus.startswith("sim:") else 0

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
    """Check every setting; raise SettingsError naming the option."""
    checks: list[tuple[bool, str]] = [
        (bool(_NODE_RE.match(s.node)), f"--node {s.node!r}: letters, digits, '.', '_', '-' (max 63)"),
        (
            s.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "--redis-url must be redis://, rediss:// or unix://",
        ),
        (
            s.gpus == "nvml" or re.fullmatch(r"sim:[1-9][0-9]?", s.gpus) is not None,
            "--gpus must be nvml or sim:N (1-99)",
        ),
        (bool(s.model) or s.engine is EngineKind.EXTERNAL, "--model is required to start engines"),
        (1 <= s.port_base <= 65000, "--port-base must be in 1..65000"),
        (s.max_batch >= 1, "--max-batch must be >= 1"),
        (s.cuda_devices_by in ("uuid", "index"), "--cuda-devices-by must be uuid or index"),
        (s.engine is not EngineKind.EXTERNAL or bool(s.externals), "--engine external needs at least one --external"),
        (
            not s.externals or s.engine is EngineKind.EXTERNAL,
            "--external servers run on a node of external servers only: leave --engine out or give --engine external",
        ),
        (
            len({e.id for e in s.externals}) == len(s.externals)
            and len({g for e in s.externals for g in e.gpus}) == sum(len(e.gpus) for e in s.externals),
            "--external: each server needs its own id and its own GPUs",
        ),
        (s.engine is not EngineKind.LLAMA_CPP or s.model_file is not None, "--engine llama.cpp needs --model-file"),
        (
            not s.sleep_mode or s.engine in (EngineKind.VLLM, EngineKind.SIMULATED),
            "--sleep-mode needs --engine vllm (vLLM's sleep mode) or sim",
        ),
        (s.sleep_timeout_s > 0, "--sleep-timeout-s must be > 0"),
        (s.start_retries >= 1, "--start-retries must be >= 1"),
        (s.sim_speed > 0, "--sim-speed must be > 0"),
        (min(s.ttft_s) > 0 and s.tbt_s > 0, "SLO targets must be positive seconds"),
        (s.tick_s > 0 and s.clock_interval_s >= s.tick_s, "--clock-interval-s must be >= --tick-s > 0"),
        (s.load_window_s >= 1, "--load-window-s must be >= 1"),
        (0 <= s.metrics_port <= 65535, "--metrics-port must be in 0..65535"),
        (min(s.drain_timeout_s, s.start_timeout_s, s.stop_grace_s) >= 0, "timeouts must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)
    return s


def from_args(args: Any) -> AgentSettings:
    """Build settings from the argparse namespace of ``wattgate agent``."""
    try:
        ttft = tuple(float(x) for x in args.ttft_s.split(","))
    except ValueError as exc:
        raise SettingsError("--ttft-s: three seconds for S,M,L inputs, e.g. 0.25,0.5,1.5") from exc
    if len(ttft) != 3:
        raise SettingsError("--ttft-s: three seconds for S,M,L inputs, e.g. 0.25,0.5,1.5")
    indices = None
    if args.gpu_indices:
        try:
            indices = tuple(int(x) for x in args.gpu_indices.split(","))
        except ValueError as exc:
            raise SettingsError("--gpu-indices: comma-separated integers, e.g. 0,1,2,3") from exc
    # --external alone makes a node of external servers; without either the agent starts vLLM engines
    kind = args.engine or ("external" if args.external else "vllm")
    engine = {"sim": EngineKind.SIMULATED}.get(kind) or EngineKind(kind)
    return validate(
        AgentSettings(
            redis_url=args.redis_url,
            node=args.node,
            model=args.model or "",
            gpus=args.gpus,
            gpu_indices=indices,
            engine=engine,
            prefix=args.prefix,
            host=args.host,
            port_base=args.port_base,
            max_batch=args.max_batch,
            state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(args.node),
            observe_only=args.observe_only,
            engine_command=tuple(args.engine_command.split()) if args.engine_command else (),
            engine_args=tuple(args.engine_arg or ()),
            model_file=Path(args.model_file) if args.model_file else None,
            cuda_devices_by=args.cuda_devices_by,
            sleep_mode=args.sleep_mode,
            profile=args.profile or "",
            gpu_state_dir=Path(args.gpu_state_dir) if args.gpu_state_dir else None,
            sim_speed=args.sim_speed,
            externals=tuple(parse_external(e) for e in args.external or ()),
            ttft_s=(ttft[0], ttft[1], ttft[2]),
            tbt_s=args.tbt_s,
            tick_s=args.tick_s,
            clock_interval_s=args.clock_interval_s,
            load_window_s=args.load_window_s,
            drain_timeout_s=args.drain_timeout_s,
            start_timeout_s=args.start_timeout_s,
            stop_grace_s=args.stop_grace_s,
            start_retries=args.start_retries,
            sleep_timeout_s=args.sleep_timeout_s,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    )
