"""The ``wattgate sim-backend`` and ``wattgate profile`` subcommands (the settings model only at import time)."""
# ruff: noqa: PLC0415  (imports are lazy on purpose: `wattgate --help` must stay fast)

from __future__ import annotations

import sys
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, choice, integer, number, optional, text
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command

SIM_BACKEND_OPTIONS: tuple[Option, ...] = (
    c.HOST,
    c.PORT.for_command(default=8000),
    c.MODEL.for_command(required=True, help="model name clients must send (as vLLM's --served-model-name)"),
    c.ARCH,
    c.ENGINE_CALIBRATION,
    Option("tp", integer(1), None, "tensor parallelism (needs that many GPUs)", required=True, example="2"),
    c.GPU_INDICES.for_command(aliases=("--gpus",), help="simulated GPU indices", default_text="0..TP-1"),
    c.GPU_STATE_DIR,
    c.SIM_SPEED.for_command(aliases=("--speed",)),
    Option(
        "max_num_seqs",
        optional(integer(1)),
        None,
        "most requests running at once (vLLM --max-num-seqs)",
        aliases=("--max-batch",),
        default_text="the engine calibration's (1024 for vllm-v1)",
        example="8",
    ),
    Option(
        "max_num_batched_tokens",
        optional(integer(1)),
        None,
        "tokens per engine step (vLLM --max-num-batched-tokens)",
        default_text="the engine calibration's",
        example="2048",
    ),
    Option(
        "gpu_memory_utilization",
        optional(number(maximum=1.0, above=0)),
        None,
        "share of GPU memory the engine takes for weights and KV cache (vLLM --gpu-memory-utilization)",
        default_text="0.9",
        example="0.8",
    ),
    c.LOAD_WINDOW_S.for_command(default=30.0, help="the load gauge: arrivals in this window (s) / its length"),
    Option(
        "default_output_tokens", integer(1), 64, "output length without max_tokens or a wattgate_sim hint", example="8"
    ),
    c.CLASS_EDGES,
    Option(
        "enable_sleep_mode",
        boolean(),
        False,
        "serve vLLM's POST /sleep?level=1, POST /wake_up, GET /is_sleeping (wake-up time modelled)",
    ),
    c.LOG_LEVEL.for_command(default="warning"),
)

PROFILE_OPTIONS: tuple[Option, ...] = (
    c.OUT.for_command(required=True, help="profile file to write"),
    Option("sim", boolean(), False, "measure sim-backend instances on simulated GPUs"),
    c.ARCH.for_command(help="with --sim: the architecture the emulated engines run"),
    c.ENGINE_CALIBRATION.for_command(
        help="with --sim: the serving model's engine calibration (vllm-v1, dynamollm-2024)"
    ),
    Option(
        "url",
        text(),
        "",
        "without --sim: base URL of the engine (e.g. http://127.0.0.1:8000)",
        default_text="none",
        example="http://127.0.0.1:9",
    ),
    c.MODEL.for_command(help="model name to send", default_text="the engine's /v1/models; --sim: --arch"),
    c.GPU_INDICES.for_command(aliases=("--gpus",), help="GPU indices of the instance", default_text="0..TP-1"),
    c.GPU_KIND.for_command(help="without --sim: the GPU seam, nvml or simulated"),
    c.GPU_STATE_DIR.for_command(help="with --gpu-kind simulated: the shared state directory"),
    Option(
        "tps",
        text(nonempty=True),
        "8",
        "TP values (with --sim one instance each; else the engine's one TP)",
        example="2",
    ),
    Option(
        "clocks",
        text(nonempty=True),
        "",
        "SM clocks to sweep, MHz, comma-separated",
        required=True,
        example="1400,1980",
    ),
    Option(
        "loads", text(nonempty=True), "", "loads to sweep, requests/s, comma-separated", required=True, example="1,2"
    ),
    Option("types", text(nonempty=True), "SS,SM,SL,MS,MM,ML,LS,LM,LL", "request types to sweep", example="SS"),
    Option("warmup_s", number(0.0), 30.0, "(simulated) seconds of load before measuring", example="1"),
    c.DURATION_S.for_command(help="(simulated) seconds measured per point"),
    c.SIM_SPEED.for_command(aliases=("--speed",), help="the engine's time compression (1 for a real engine)"),
    Option(
        "timing",
        optional(choice("client", "engine")),
        None,
        "latency source (see README)",
        default_text="engine with --sim, else client",
        example="client",
    ),
    Option("arrivals", choice("poisson", "uniform"), "poisson", "arrival process of the load"),
    c.SEED.for_command(default=1),
)


def number_list(text: str, what: str, kind: type[Any]) -> tuple[Any, ...]:
    """``"1,2,3"`` as a tuple of ``kind`` (int or float); ValueError naming the option ``what`` if it is not."""
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{what} must be a comma-separated list of {noun}, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def sim_backend_main(args: Values) -> int:
    import uvicorn

    from wattgate.agent.engines.emulator import Emulator, EmulatorSettings
    from wattgate.agent.engines.emulator_app import build_app
    from wattgate.agent.gpu.base import GpuError
    from wattgate.agent.gpu.simulated import open_simulated_gpus
    from wattgate.listen import ListenError, open_listener
    from wattgate.profiles.classes import ProfilesError
    from wattgate.servingmodel.calibration import ServingModel
    from wattgate.servingmodel.errors import ServingModelError

    try:
        gpus = tuple(args.gpu_indices) or tuple(range(args.tp))
        settings = EmulatorSettings(
            model=args.model,
            tp=args.tp,
            arch=args.arch,
            engine=args.engine_calibration,
            speed=args.sim_speed,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=args.gpu_memory_utilization,
            load_window_s=args.load_window_s,
            default_output_tokens=args.default_output_tokens,
            edges=args.class_edges,
            sleep_mode=args.enable_sleep_mode,
        )
        model = ServingModel(args.arch, args.engine_calibration)
        sim_gpus = open_simulated_gpus(gpus, args.gpu_state_dir, writer=f"sim-backend {args.model}")
        emulator = Emulator(model, settings, sim_gpus)
    except (ProfilesError, ServingModelError, GpuError, OSError, ValueError) as exc:
        sys.stderr.write(f"wattgate sim-backend: error: {exc}\n")
        return 2
    try:
        sock = open_listener(args.host, args.port, "sim-backend")
    except ListenError as exc:
        sys.stderr.write(f"wattgate sim-backend: error: {exc}\n")
        return 1
    config = uvicorn.Config(build_app(emulator), host=args.host, port=args.port, log_level=args.log_level)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def profile_main(args: Values) -> int:
    from types import SimpleNamespace

    from wattgate.agent.profile_run import run
    from wattgate.agent.profiler import ProfilerError

    # profile_run reads the older names: --gpus as text, --speed, and nvml|simulated
    legacy = SimpleNamespace(
        **args.as_dict(),
        gpus=",".join(map(str, args.gpu_indices)) or None,
        speed=args.sim_speed,
        engine=args.engine_calibration,
    )
    legacy.gpu_kind = "simulated" if args.gpu_kind.startswith("sim") else "nvml"
    legacy.out = str(args.out)
    try:
        return run(legacy)
    except ProfilerError as exc:
        sys.stderr.write(f"wattgate profile: error: {exc}\n")
        return 2


SIM_BACKEND = Command(
    "sim-backend",
    "an OpenAI-compatible emulated vLLM instance driven by the serving model",
    SIM_BACKEND_OPTIONS,
    sim_backend_main,
    "Serve an emulated vLLM instance: the serving model's engine (continuous batching, chunked prefill, KV cache, "
    "step times from measured H100 kernels at the locked SM clock) in real time.",
)
PROFILE = Command(
    "profile",
    "measure a profile: sweep SM clock x load x request type on an engine",
    PROFILE_OPTIONS,
    profile_main,
    "Sweep SM clock x load x request type, measure P99 TTFT/TBT and power, write a profile JSON.",
)
COMMANDS = (SIM_BACKEND, PROFILE)


def register(sub: Any) -> None:
    for command in COMMANDS:
        add_command(sub, command)
