"""``wattgate agent``: run the node agent on a GPU host (imports only argparse at module level)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run the node agent: engines, drains, clock locks, power telemetry",
        description="Carry out the plan on this GPU host. Needs root or CAP_SYS_ADMIN to lock clocks "
        "(otherwise observe-only). SIGTERM/SIGINT: reset locked clocks, drain and stop engines, exit 0.",
    )
    a = p.add_argument
    a("--redis-url", required=True, help="Redis holding the plan and the instance registry")
    a("--node", required=True, help="this node's name, as the planner places instances on it")
    a("--gpus", default="nvml", help="nvml (real GPUs) or sim:N (N simulated GPUs)  [nvml]")
    a("--gpu-indices", default="", help="nvml: manage only these GPU indices, e.g. 0,1,2,3  [all]")
    a(
        "--engine",
        default=None,
        choices=["vllm", "tgi", "llama.cpp", "sim", "external"],
        help="engine kind  [vllm; external with --external]",
    )
    a("--model", default="", help="model to serve (vLLM/TGI model id; llama.cpp/simulated: the name it is served as)")
    a("--model-file", default="", help="llama.cpp: the GGUF model file llama-server loads")
    a("--prefix", default="wg", help="Redis key prefix  [wg]")
    a("--host", default="127.0.0.1", help="address engines bind and gateways reach  [127.0.0.1]")
    a("--port-base", type=int, default=8100, help="first port for engine instances  [8100]")
    a("--max-batch", type=int, default=256, help="engine max concurrent sequences (--max-num-seqs)  [256]")
    a("--state-dir", default="", help="clock-lock and engine state, engine logs  [/var/lib/wattgate/NODE]")
    a("--observe-only", action="store_true", help="never lock clocks: only observe and report")
    a("--engine-command", default="", help="launcher replacing vllm serve / text-generation-launcher / llama-server")
    a("--engine-arg", action="append", help="extra argument for the engine (repeatable)")
    a("--cuda-devices-by", default="uuid", choices=["uuid", "index"], help="CUDA_VISIBLE_DEVICES naming  [uuid]")
    a("--sleep-mode", action="store_true", help="vLLM: --enable-sleep-mode; the plan's standby instances sleep")
    a("--sleep-timeout-s", type=float, default=120.0, help="longest wait for vLLM to fall asleep or wake  [120]")
    a("--profile", default="", help="profile (path or bundled name) for the clock loop  [sim: the shipped one]")
    a("--gpu-state-dir", default="", help="sim: state directory shared by simulated GPUs and engines")
    a("--sim-speed", type=float, default=1.0, help="sim: emulation speed factor  [1]")
    a(
        "--external",
        action="append",
        help="a server you run: id=NAME,url=http://H:P,gpus=0:1[,pool=SS][,model=M][,engine=vllm|tgi|llama.cpp|sim] "
        "(repeatable); the planner picks its pool and clock, the agent never starts or stops it",
    )
    a("--ttft-s", default="0.25,0.5,1.5", help="P99 TTFT targets (s) for S,M,L inputs  [0.25,0.5,1.5]")
    a("--tbt-s", type=float, default=0.2, help="P99 time-between-tokens target (s)  [0.2]")
    a("--tick-s", type=float, default=1.0, help="control and telemetry period (s)  [1]")
    a("--clock-interval-s", type=float, default=5.0, help="instance-level clock loop period (s)  [5]")
    a("--load-window-s", type=int, default=10, help="seconds of gateway load windows averaged  [10]")
    a("--drain-timeout-s", type=float, default=60.0, help="longest wait for in-flight requests  [60]")
    a("--start-timeout-s", type=float, default=900.0, help="longest wait for an engine to be healthy  [900]")
    a("--stop-grace-s", type=float, default=30.0, help="SIGTERM to SIGKILL grace (s)  [30]")
    a("--start-retries", type=int, default=5, help="failed starts in a row before giving up on an instance  [5]")
    a("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)  [0]")
    a("--metrics-host", default="0.0.0.0", help="address of the metrics endpoint  [0.0.0.0]")
    a("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="[INFO]")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import logging

    from wattgate.agent.errors import AgentError
    from wattgate.agent.gpu.base import GpuError
    from wattgate.agent.main import run
    from wattgate.agent.settings import from_args

    try:
        settings = from_args(args)
    except AgentError as exc:
        print(f"wattgate agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    try:
        return run(settings)
    except (AgentError, GpuError) as exc:
        print(f"wattgate agent: {exc}", file=sys.stderr)
        return 1
