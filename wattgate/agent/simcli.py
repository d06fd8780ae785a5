"""The ``wattgate sim-backend`` and ``wattgate profile`` subcommands (argparse only at import time)."""
# ruff: noqa: PLC0415  (imports are lazy on purpose: `wattgate --help` must stay fast)

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim-backend",
        help="an OpenAI-compatible emulated vLLM instance driven by the serving model",
        description="Serve an emulated vLLM instance: the serving model's engine (continuous batching, chunked "
        "prefill, KV cache, step times from measured H100 kernels at the locked SM clock) in real time.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", required=True, help="model name clients must send (as in vLLM's --served-model-name)")
    p.add_argument("--arch", default="llama-3.1-70b", help="model architecture the engine runs (default llama-3.1-70b)")
    p.add_argument("--engine", default="vllm-v1", help="engine calibration: vllm-v1 (default) or dynamollm-2024")
    p.add_argument("--tp", type=int, required=True, help="tensor parallelism (needs that many GPUs)")
    p.add_argument("--gpus", default=None, help="comma-separated simulated GPU indices (default 0..tp-1)")
    p.add_argument("--gpu-state-dir", default=None, help="shared simulated-GPU state directory (default: private)")
    p.add_argument("--speed", type=float, default=1.0, help="time compression: simulated seconds per wall second")
    p.add_argument(
        "--max-num-seqs",
        "--max-batch",
        dest="max_num_seqs",
        type=int,
        default=None,
        help="most requests running at once (vLLM --max-num-seqs; default: the engine calibration's, 1024 for vllm-v1)",
    )
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="tokens per engine step (default: the calibration's)"
    )
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=None, help="share of GPU memory vLLM takes (default 0.9)"
    )
    p.add_argument(
        "--load-window-s", type=float, default=30.0, help="the load gauge: arrivals in this window / its length"
    )
    p.add_argument("--default-output-tokens", type=int, default=64, help="output length without max_tokens or hint")
    p.add_argument(
        "--class-edges",
        default="408,1109,94,371",
        help="input S/M max, input M/L max, output S/M max, output M/L max tokens (the request-type edges)",
    )
    p.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="serve vLLM's POST /sleep?level=1, POST /wake_up, GET /is_sleeping (wake-up time modelled)",
    )
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=sim_backend_main)

    q = sub.add_parser(
        "profile",
        help="measure a profile: sweep SM clock x load x request type on an engine",
        description="Sweep SM clock x load x request type, measure P99 TTFT/TBT and power, write a profile JSON.",
    )
    q.add_argument("--out", required=True, help="profile file to write")
    q.add_argument("--sim", action="store_true", help="measure sim-backend instances on simulated GPUs")
    q.add_argument("--arch", default="llama-3.1-70b", help="with --sim: the architecture the emulated engines run")
    q.add_argument("--engine", default="vllm-v1", help="with --sim: the engine calibration (vllm-v1, dynamollm-2024)")
    q.add_argument("--url", default=None, help="without --sim: base URL of the engine (e.g. http://127.0.0.1:8000)")
    q.add_argument("--model", default=None, help="model name to send (default: the engine's /v1/models; --sim: --arch)")
    q.add_argument("--gpus", default=None, help="GPU indices of the instance (default 0..tp-1)")
    q.add_argument("--gpu-kind", choices=("nvml", "simulated"), default="nvml", help="without --sim: GPU seam")
    q.add_argument("--gpu-state-dir", default=None, help="with --gpu-kind simulated: the shared state directory")
    q.add_argument("--tps", default="8", help="TP values (with --sim one instance each; else the engine's one TP)")
    q.add_argument("--clocks", required=True, help="SM clocks to sweep, MHz, comma-separated")
    q.add_argument("--loads", required=True, help="loads to sweep, requests/s, comma-separated")
    q.add_argument("--types", default="SS,SM,SL,MS,MM,ML,LS,LM,LL", help="request types to sweep")
    q.add_argument("--warmup-s", type=float, default=30.0, help="(simulated) seconds of load before measuring")
    q.add_argument("--duration-s", type=float, default=60.0, help="(simulated) seconds measured per point")
    q.add_argument("--speed", type=float, default=1.0, help="the engine's time compression (1 for a real engine)")
    q.add_argument("--timing", choices=("client", "engine"), default=None, help="latency source (see README)")
    q.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    q.add_argument("--seed", type=int, default=1)
    q.set_defaults(func=profile_main)


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


def sim_backend_main(args: argparse.Namespace) -> int:
    import uvicorn

    from wattgate.agent.engines.emulator import Emulator, EmulatorSettings
    from wattgate.agent.engines.emulator_app import build_app
    from wattgate.agent.gpu.base import GpuError
    from wattgate.agent.gpu.simulated import open_simulated_gpus
    from wattgate.profiles.classes import ClassEdges, ProfilesError
    from wattgate.servingmodel.calibration import ServingModel
    from wattgate.servingmodel.errors import ServingModelError

    try:
        gpus = number_list(args.gpus, "--gpus", int) if args.gpus else tuple(range(args.tp))
        edges = number_list(args.class_edges, "--class-edges", int)
        if len(edges) != 4:
            raise ValueError(f"--class-edges needs 4 integers, got {args.class_edges!r}")
        settings = EmulatorSettings(
            model=args.model,
            tp=args.tp,
            arch=args.arch,
            engine=args.engine,
            speed=args.speed,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=args.gpu_memory_utilization,
            load_window_s=args.load_window_s,
            default_output_tokens=args.default_output_tokens,
            edges=ClassEdges(*edges),
            sleep_mode=args.enable_sleep_mode,
        )
        model = ServingModel(args.arch, args.engine)
        sim_gpus = open_simulated_gpus(gpus, args.gpu_state_dir, writer=f"sim-backend {args.model}")
        emulator = Emulator(model, settings, sim_gpus)
    except (ProfilesError, ServingModelError, GpuError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    uvicorn.run(build_app(emulator), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def profile_main(args: argparse.Namespace) -> int:
    from wattgate.agent.profile_run import run
    from wattgate.agent.profiler import ProfilerError

    try:
        return run(args)
    except ProfilerError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
