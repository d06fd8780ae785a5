"""``wattgate agent``: run the node agent on a GPU host (imports only the settings model at module level)."""

from __future__ import annotations

import re
import sys
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, choice, custom, integer, listof, number, optional, path, text
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _node(value: str) -> None:
    if not _NODE_RE.match(value):
        raise ValueError(f"{value!r}: letters, digits, '.', '_', '-' (at most 63, starting with a letter or digit)")


def _external(raw: Any) -> Any:
    from wattgate.agent.errors import SettingsError
    from wattgate.agent.settings import parse_external

    try:
        return parse_external(text(nonempty=True).convert(raw))
    except SettingsError as exc:
        raise ValueError(str(exc)) from None


def _show_external(e: Any) -> str:
    text = f"id={e.id},url={e.url},gpus={':'.join(map(str, e.gpus))}"
    text += f",pool={e.pool}" if e.pool else ""
    text += f",model={e.model}" if e.model else ""
    return text + ("" if e.engine == "vllm" else f",engine={'sim' if e.engine == 'simulated' else e.engine}")


OPTIONS: tuple[Option, ...] = (
    c.REDIS_URL.for_command(help="Redis holding the plan and the instance registry"),
    Option(
        "node",
        text(nonempty=True, check=_node),
        "",
        "this node's name, as the planner places instances on it",
        required=True,
        example="n1",
    ),
    c.GPU_KIND.for_command(aliases=("--gpus",)),
    c.GPU_INDICES.for_command(help="nvml: manage only these GPU indices", default_text="all"),
    Option(
        "engine",
        optional(choice("vllm", "tgi", "llama.cpp", "simulated", "external", aliases={"sim": "simulated"})),
        None,
        "engine kind (llama.cpp: llama-server; simulated: wattgate sim-backend, the emulated engine; external: "
        "servers listed by --external)",
        default_text="vllm; external when --external is given",
        example="tgi",
    ),
    c.MODEL.for_command(help="model to serve (vLLM/TGI model id; llama.cpp/simulated: the name it is served as)"),
    Option(
        "model_file",
        path(),
        None,
        "llama.cpp: the GGUF model file llama-server loads",
        default_text="none",
        example="model.gguf",
    ),
    c.REDIS_PREFIX,
    c.HOST.for_command(help="address engines bind and gateways use to reach them"),
    Option("port_base", integer(1, 65000), 8100, "first port tried for engine instances"),
    c.MAX_BATCH,
    Option(
        "state_dir",
        path(),
        None,
        "clock-lock and engine state, engine logs (logs/ID.log)",
        default_text="/var/lib/wattgate/NODE (root) or ~/.local/state/wattgate/NODE",
        example="agent-state",
    ),
    Option("observe_only", boolean(), False, "never lock clocks: only observe and report"),
    Option(
        "engine_command",
        listof(text(), None, label="command line (shell words)"),
        (),
        "launcher replacing vllm serve / text-generation-launcher / llama-server / wattgate sim-backend",
        default_text="none",
        example="echo serve",
    ),
    Option(
        "engine_args",
        listof(text(), None, repeat=True, label="argument, repeatable (environment: shell words)"),
        (),
        "extra argument for the engine, e.g. --engine-arg=--enforce-eager",
        flag="--engine-arg",
        default_text="none",
        example="--enforce-eager",
    ),
    Option("cuda_devices_by", choice("uuid", "index"), "uuid", "how CUDA_VISIBLE_DEVICES names the GPUs"),
    Option(
        "sleep_mode",
        boolean(),
        False,
        "vLLM (or the emulated engine): --enable-sleep-mode; the plan's standby instances sleep",
    ),
    Option(
        "sleep_timeout_s", number(above=0), 120.0, "longest wait for an engine to fall asleep or wake (s)", example="60"
    ),
    c.PROFILE.for_command(
        help="profile for the clock loop: a builtin name or a file",
        default_text="simulated engines: the shipped one; vLLM/TGI/llama.cpp: none (no clock loop)",
    ),
    c.GPU_STATE_DIR.for_command(default_text="STATE_DIR/sim-gpus"),
    c.SIM_SPEED,
    Option(
        "externals",
        listof(
            custom("id=NAME,url=URL,gpus=0:1[,pool=SS][,model=M][,engine=E]", _external, _show_external),
            None,
            repeat=True,
            label="id=NAME,url=http://H:P,gpus=0:1[,pool=SS][,model=M][,engine=vllm|tgi|llama.cpp|sim], "
            "repeatable (environment: space-separated)",
        ),
        (),
        "a server you run: the planner picks its pool and clock, the agent never starts or stops it "
        "(implies --engine external)",
        flag="--external",
        default_text="none",
        example="id=e0,url=http://127.0.0.1:9,pool=SS,gpus=0",
    ),
    c.TTFT_S,
    c.TBT_S,
    Option("tick_s", number(above=0), 1.0, "control and telemetry period (s)", example="0.5"),
    Option("clock_interval_s", number(above=0), 5.0, "instance-level clock loop period (s)", example="6"),
    c.BURST_HOLD_S,
    c.BURST_MIN_WAITING,
    c.BURST_MIN_WAITING_FIXED,
    c.LOAD_WINDOW_S.for_command(help="seconds of the gateways' per-pool load windows the clock loop averages"),
    Option("drain_timeout_s", number(0.0), 60.0, "longest wait for in-flight requests when draining (s)"),
    Option("start_timeout_s", number(0.0), 900.0, "longest wait for a new engine to become healthy (s)"),
    Option("stop_grace_s", number(0.0), 30.0, "SIGTERM to SIGKILL grace for an engine (s)"),
    Option("start_retries", integer(1), 5, "failed starts in a row before giving up on an instance"),
    Option("metrics_port", integer(0, 65535), 0, "serve Prometheus metrics on this port (0: off)", example="9464"),
    Option("metrics_host", text(nonempty=True), "0.0.0.0", "address of the metrics endpoint", example="127.0.0.1"),
    c.LOG_LEVEL,
)


def run(values: Values) -> int:
    import logging

    from wattgate.agent.errors import AgentError
    from wattgate.agent.gpu.base import GpuError
    from wattgate.agent.main import run as run_agent
    from wattgate.agent.settings import from_values

    try:
        settings = from_values(values)
    except AgentError as exc:
        print(f"wattgate agent: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=values.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    try:
        return run_agent(settings)
    except (AgentError, GpuError, OSError) as exc:  # OSError: a state directory it cannot make or write
        print(f"wattgate agent: error: {exc}", file=sys.stderr)
        return 1


COMMAND = Command(
    "agent",
    "run the node agent: engines, drains, clock locks, power telemetry",
    OPTIONS,
    run,
    "Carry out the plan on this GPU host. Needs root or CAP_SYS_ADMIN to lock clocks (otherwise observe-only). "
    "At start it checks that Redis answers and that its metrics port is free, and exits with one line if not. "
    "SIGTERM/SIGINT: reset locked clocks, drain and stop engines, exit 0.",
)
COMMANDS = (COMMAND,)


def register(subparsers: Any) -> None:
    add_command(subparsers, COMMAND)
