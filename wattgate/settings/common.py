"""Options that several commands share, defined once: the same name, kind, unit and default everywhere."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from wattgate.carbon import CarbonError, CarbonIntensity, parse_carbon
from wattgate.profiles.classes import LENGTH_CLASSES, POOL_NAMES, ClassEdges, ProfilesError, SloTargets
from wattgate.servingmodel.arch import ARCHITECTURES
from wattgate.settings.kinds import Kind, boolean, choice, custom, integer, listof, number, optional, path, text
from wattgate.settings.model import Option

# Where a command that needs Redis goes when none is given (a gateway without one serves static backends only).
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for errors and logs)."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def _redis_url(raw: Any) -> str | None:
    value = text().convert(raw) if raw is not None else ""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {redact_url(value)}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise ValueError(f"the port is not a number in 0..65535: {redact_url(value)}") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"no host in {redact_url(value)}")
    return value


def _show_redis_url(value: Any) -> str:
    return "none" if value is None else redact_url(str(value))


def _ttft(raw: Any) -> tuple[float, float, float]:
    values = listof(number(above=0)).convert(raw)
    if len(values) != 3:
        raise ValueError(f"expected three seconds for S, M and L inputs, e.g. 0.25,0.5,1.5; got {raw!r}")
    return (values[0], values[1], values[2])


def _edges(raw: Any) -> ClassEdges:
    if isinstance(raw, dict):
        try:
            return ClassEdges(**{str(k): integer(1).convert(v) for k, v in raw.items()})
        except TypeError as exc:
            raise ValueError(
                f"keys are input_short_max, input_medium_max, output_short_max, output_medium_max ({exc})"
            ) from None
        except ProfilesError as exc:
            raise ValueError(str(exc)) from None
    values = listof(integer(1)).convert(raw)
    if len(values) != 4:
        raise ValueError(
            f"expected 4 token counts: input S/M max, input M/L max, output S/M max, output M/L max; got {raw!r}"
        )
    try:
        return ClassEdges(*values)
    except ProfilesError as exc:
        raise ValueError(str(exc)) from None


def _show_edges(e: Any) -> str:
    return f"{e.input_short_max},{e.input_medium_max},{e.output_short_max},{e.output_medium_max}"


def _check_nodes(value: str) -> None:
    if value.isdigit():
        if int(value) < 1:
            raise ValueError("expected at least 1 node")
        return
    names = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, gpus = part.partition("=")
        if not sep or not name.strip() or not gpus.strip().isdigit() or int(gpus) < 1:
            raise ValueError(f"expected N, or NAME=GPUS,NAME=GPUS with GPUS >= 1; got {part!r}")
        names.append(name.strip())
    if len(set(names)) != len(names):
        raise ValueError(f"node names must be unique, got {names}")


def _gpu_kind(value: str) -> str:
    kind, sep, count = value.lower().partition(":")
    if kind == "nvml" and not sep:
        return "nvml"
    if kind in ("simulated", "sim") and (not sep or (count.isdigit() and 1 <= int(count) <= 99)):
        return f"simulated{sep}{count}"  # sim:N, the older spelling, is simulated:N
    raise ValueError(f"expected nvml or simulated:N (N 1..99), got {value!r}")


_SLO = SloTargets()
_POOLS = ", ".join(POOL_NAMES)

REDIS_URL = Option(
    "redis_url",
    custom("redis://[:password@]host:port/db, rediss:// (TLS) or unix://", _redis_url, _show_redis_url, metavar="URL"),
    None,
    "Redis shared by the deployment; commands that need one and get none use " + DEFAULT_REDIS_URL,
    example="redis://127.0.0.1:1/0",
)
REDIS_PREFIX = Option(
    "redis_prefix", text(nonempty=True), "wg", "key prefix shared by one deployment", aliases=("--prefix",), example="t"
)
LOG_LEVEL = Option(
    "log_level", choice("critical", "error", "warning", "info", "debug"), "info", "logging level (any case)"
)
PROFILE = Option(
    "profile",
    text(),
    "",
    "profile: a builtin name or a profile file",
    default_text="the built-in profile",
    example="llama-2-70b-h100",
)
HOST = Option("host", text(nonempty=True), "127.0.0.1", "address to listen on", example="0.0.0.0")
PORT = Option("port", integer(1, 65535), 8080, "TCP port to listen on", example="9")
MODEL = Option("model", text(), "", "model name served (vLLM/TGI model id, or the emulated model's name)", example="m")
GPUS = Option(
    "gpus",
    optional(integer(1)),
    None,
    "GPUs in the cluster, 8 per node",
    default_text="none",
    example="16",
)
GPUS_PER_NODE = Option(
    "gpus_per_node", integer(1), 8, "GPUs per node; tensor-parallel groups stay in one node", example="4"
)
NODES = Option(
    "nodes",
    text(label="N or NAME=GPUS,...", check=_check_nodes),
    "",
    "the cluster's nodes: N (node1..nodeN with --gpus-per-node GPUs each) or name=GPUS,name=GPUS",
    default_text="none",
    example="a=8,b=8",
)
HEADROOM = Option(
    "headroom",
    number(maximum=1.0, above=0),
    0.8,
    "share of an instance's SLO-feasible capacity the plan (and the clock policy) may load it to",
    example="0.5",
)
TIME_LIMIT_S = Option(
    "time_limit_s", number(above=0), 1.5, "MILP time limit (s) before the best plan found", example="3"
)
TTFT_S = Option(
    "ttft_s",
    custom("three seconds, S,M,L inputs", _ttft, metavar="S,M,L"),
    tuple(_SLO.ttft_p99_s[c] for c in LENGTH_CLASSES),
    "P99 time-to-first-token targets (s) for short, medium and long inputs",
    example="0.3,0.6,2",
)
TBT_S = Option(
    "tbt_s", number(above=0), _SLO.tbt_p99_s, "P99 time-between-tokens target (s), every request type", example="0.2"
)
CLASS_EDGES = Option(
    "class_edges",
    custom("4 token counts, or a YAML mapping", _edges, _show_edges, metavar="IS,IM,OS,OM"),
    ClassEdges(),
    "request-type edges: input S/M max, input M/L max, output S/M max, output M/L max tokens (YAML: a mapping "
    "input_short_max, input_medium_max, output_short_max, output_medium_max)",
    example="100,200,10,20",
)
SEED = Option("seed", integer(), 0, "random seed", example="7")
CLASSIFIER_TEXT_SLOTS = Option(
    "classifier_text_slots",
    boolean(),
    True,
    "observations keep the prompt's hashed n-gram slots so adaptation can learn per prompt (off: features only, "
    "the privacy setting)",
)
ADMISSION_WINDOW_S = Option(
    "admission_window_s",
    number(0.0),
    0.0,
    "admission by the plan: an instance holding more requests than its planned req/s x this is full, and a "
    "request spills to the next pool of its route with room; queues only when all are full (s; 0: off, the "
    "default: it bought nothing on the Azure traces, README)",
    example="2",
)
SPILL_ANY = Option(
    "spill_any",
    boolean(),
    False,
    "work-conserving spill: a request whose route's instances are all full (admission by the plan, "
    "--admission-window-s) goes to the least full instance with room of any pool instead of queueing",
)
BURST_HOLD_S = Option(
    "burst_hold_s",
    number(0.0),
    1.0,
    "the clock loop's burst rule: an instance whose engine has requests waiting runs at its top clock at once "
    "(checked every control tick) until its queue has been shorter than --burst-min-waiting this long (s; 0: off)",
    example="5",
)
BURST_MIN_WAITING = Option(
    "burst_min_waiting",
    integer(1),
    4,
    "the burst rule's trigger: requests waiting in an engine's queue (vLLM's num_requests_waiting) that take its "
    "instance to the top clock",
    example="1",
)
BURST_MIN_WAITING_FIXED = Option(
    "burst_min_waiting_fixed",
    integer(1),
    1,
    "the burst rule's trigger on servers wattgate does not manage (a fixed fleet: only their clocks can meet a burst)",
    example="4",
)
JSON = Option("json", boolean(), False, "print one JSON document instead of a table")
SPEED = Option("speed", number(above=0), 1.0, "trace seconds per wall (or simulated) second", example="2")
SIM_SPEED = Option(
    "sim_speed",
    number(above=0),
    1.0,
    "emulated engines and simulated GPUs: emulated seconds per wall second",
    example="20",
)
MAX_BATCH = Option(
    "max_batch", integer(1), 256, "most requests an engine runs at once (vLLM --max-num-seqs)", example="8"
)
GPU_STATE_DIR = Option(
    "gpu_state_dir",
    path(),
    None,
    "simulated GPUs: state directory shared by simulated GPUs and emulated engines",
    default_text="private",
    example="gpu-state",
)
GPU_INDICES = Option(
    "gpu_indices",
    listof(integer(0)),
    (),
    "GPU indices to use",
    default_text="all (or 0..TP-1)",
    example="0,1",
)
GPU_KIND = Option(
    "gpu_kind",
    custom("nvml|simulated[:N]", lambda raw: _gpu_kind(text(nonempty=True).convert(raw)), metavar="nvml|simulated:N"),
    "nvml",
    "GPU seam: nvml (real NVIDIA GPUs) or simulated:N (N simulated GPUs)",
    example="simulated:2",
)
LOAD_WINDOW_S = Option("load_window_s", number(1.0), 10.0, "seconds of load averaged", example="3")
DURATION_S = Option("duration_s", number(above=0), 60.0, "seconds to run", example="5")
TRACE = Option(
    "trace",
    listof(text(nonempty=True)),
    (),
    "Azure trace CSV(s) (TIMESTAMP, ContextTokens, GeneratedTokens)",
    positional=True,
    example="t.csv",
)
OUT = Option("out", path(), None, "where to write the output", example="out")
QUANTILE = Option(
    "quantile",
    number(0.0, below=1),
    0.9,
    "the calibrated forecast: per pool, this quantile of its own past errors over the period it plans for",
    example="0.95",
)
AMORTIZE_S = Option(
    "amortize_s",
    number(above=0),
    600.0,
    "a transition's energy is weighed against what it saves over this many seconds of the plan it leads to",
    example="300",
)
ARCH = Option(
    "arch",
    choice(*ARCHITECTURES),
    "llama-3.1-70b",
    "model architecture the serving model's engines run (its published shapes)",
    example="llama-3.1-8b",
)
ENGINE_CALIBRATION = Option(
    "engine_calibration",
    choice("vllm-v1", "dynamollm-2024"),
    "vllm-v1",
    "the serving model's engine calibration: vllm-v1 (vllm serve V1 defaults, chunked prefill) or dynamollm-2024 "
    "(the vLLM V0 engine of the DynamoLLM characterization)",
    aliases=("--engine",),
)


def _carbon(raw: Any) -> CarbonIntensity:
    try:
        return parse_carbon(raw)
    except CarbonError as exc:
        raise ValueError(str(exc)) from None


def carbon_kind() -> Kind:
    """A carbon intensity (``wattgate.carbon``): a number of gCO2e/kWh or a file of hourly values, read and checked
    when the settings are parsed, so a missing file or a bad row stops the command at start-up."""
    return custom("gCO2e/kWh >= 0, or a file of hourly values", _carbon, lambda v: v.show(), metavar="G_PER_KWH|FILE")


def node_list(spec: str, gpus_per_node: int) -> tuple[tuple[str, int], ...]:
    """``nodes`` as (name, GPUs) pairs: ``3`` is node1..node3 with ``gpus_per_node`` GPUs each."""
    if not spec:
        return ()
    if spec.isdigit():
        return tuple((f"node{i + 1}", gpus_per_node) for i in range(int(spec)))
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, gpus = part.partition("=")
        out.append((name.strip(), int(gpus)))
    return tuple(out)


def simulated_gpu_count(gpu_kind: str) -> int:
    """N of ``simulated:N`` (0 for nvml or a bare ``simulated``)."""
    kind, _, count = gpu_kind.partition(":")
    return int(count) if kind in ("simulated", "sim") and count else 0


__all__ = [
    "ADMISSION_WINDOW_S",
    "CLASS_EDGES",
    "DEFAULT_REDIS_URL",
    "GPUS",
    "HEADROOM",
    "LOG_LEVEL",
    "REDIS_PREFIX",
    "REDIS_URL",
    "SPILL_ANY",
    "TBT_S",
    "TTFT_S",
    "Kind",
    "choice",
    "node_list",
]
