"""The Redis wire schema: every key, channel and message wattgate processes exchange, versioned, JSON only.

Gateways, the planner and agents talk only through the keys below. Every message carries
``"schema": SCHEMA_VERSION``; a reader refuses a message of another major version with
``ContractError`` rather than guessing. Nothing here is pickled: a message can never run code.

Messages grow only by optional fields with defaults, so one schema version spans them: a reader
drops fields it does not know (a plan's instances' too) and fills the ones a writer left out with their
defaults. Additions within schema 1 are listed at each message (``Observation``: ``text_slots``,
``text_dim`` since ``OBSERVATION_REVISION`` 2, ``energy_j``, ``energy_source`` since 3; ``Heartbeat``:
``unmanaged``, the servers an agent runs for the user, since ``HEARTBEAT_REVISION`` 2, ``sleep_mode`` /
``asleep`` since 3; ``Plan``: ``fixed``, the ids of those the plan gives a pool and a clock, since
``PLAN_REVISION`` 2, ``PlannedInstance.standby`` since 3, ``PlannedInstance.clock_floor_mhz`` since 4).
``InstanceEnergy`` is new in schema 1 (readers that predate it never read its key).
Warm standby (vLLM sleep mode) also added the instance state ``asleep`` (gateways route only to ``ready``;
one from before it skips such a record with a warning, which routes nothing to it either).
``PlannedInstance.standby`` is written only when true and ``clock_floor_mhz`` only when set, so plans without
standby instances or clock floors stay as before.

Keys (``{p}`` is the configurable prefix, ``wg`` by default):

| key | type | writer | content |
|---|---|---|---|
| ``{p}:v1:load:s:{unix_second}`` | hash, TTL 2 h | gateways | ``{pool}:{field}`` counters, LOAD_FIELDS |
| ``{p}:v1:load:m:{unix_minute}`` | hash, TTL 8 days | gateways | the same, per minute (forecast history) |
| ``{p}:v1:observations`` | stream, capped | gateways | one ``Observation`` per finished request (field ``json``) |
| ``{p}:v1:plan`` | string | planner | the current ``Plan`` |
| ``{p}:v1:plan:seq`` | counter | planner | last plan version handed out |
| ``{p}:v1:plan:events`` | pub/sub | planner | the new plan version, after the plan key is set |
| ``{p}:v1:planner:leader`` | string, PX lease | planner | the leader's id |
| ``{p}:v1:instances`` | hash | agents, gateway config | instance id -> ``InstanceRecord`` |
| ``{p}:v1:instances:events`` | pub/sub | agents | an instance id whose record changed |
| ``{p}:v1:node:{node}:heartbeat`` | string, TTL | agents | ``Heartbeat`` |
| ``{p}:v1:node:{node}:telemetry`` | string, TTL | agents | ``NodeTelemetry`` |
| ``{p}:v1:nodes`` | set | agents | node names ever seen |
| ``{p}:v1:energy`` | hash | agents | instance id -> ``InstanceEnergy`` (its GPUs' energy counter, every second) |
| ``{p}:v1:energy:w:{instance}:{unix_minute}`` | hash, TTL | gateways | unix second -> all replicas' work on it |
| ``{p}:v1:energy:mark:{instance}`` | hash | gateways | replica -> "SECOND TS": its work before SECOND is in |
| ``{p}:v1:energy:idle:{instance}:{unix_minute}`` | hash, TTL | gateways | unix second -> the replica booking its idle |
| ``{p}:v1:energy:m:{unix_minute}`` | hash, TTL 8 d | gateways | J, tokens, requests, gCO2e booked (``energy_field``) |
| ``{p}:v1:classifier:model`` | string | classifier retrain | the current classifier model document (JSON) |
| ``{p}:v1:classifier:version`` | counter | classifier retrain | its version, watched by gateways |
"""

from __future__ import annotations

import base64
import enum
import json
import sys
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "wg"

LOAD_SECOND_TTL_S = 2 * 3600
LOAD_MINUTE_TTL_S = 8 * 24 * 3600
OBSERVATIONS_MAXLEN = 200_000
# Revision 2 of Observation (schema 1) adds ``text_slots``/``text_dim``, revision 3 ``energy_j``/``energy_source``;
# older readers ignore them.
OBSERVATION_REVISION = 3
# Revision 2 of Heartbeat adds ``unmanaged`` and of Plan adds ``fixed``; revision 3 adds warm standby
# (Heartbeat ``sleep_mode``/``asleep``, PlannedInstance ``standby``); plan revision 4 adds the reactive path's
# ``PlannedInstance.clock_floor_mhz``. Older readers ignore them.
HEARTBEAT_REVISION = 3
PLAN_REVISION = 4
HEARTBEAT_TTL_S = 15
TELEMETRY_TTL_S = 15
LOAD_FIELDS = ("requests", "input_tokens", "output_tokens")
ENERGY_MINUTE_TTL_S = LOAD_MINUTE_TTL_S
# local_j: joules a replica split over its own requests alone while Redis was away (gateway/energy.py)
ENERGY_FIELDS = ("joules", "tokens", "requests", "carbon_g", "local_j")
IDLE_KEY = "(idle)"  # the key label of an instance's idle energy (intervals in which no request ran on it)


class ContractError(Exception):
    """A message that does not follow this schema (wrong version, missing or mistyped field)."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key name, built from one prefix so several deployments can share a Redis."""

    prefix: str = DEFAULT_PREFIX

    def _k(self, *parts: object) -> str:
        return ":".join((self.prefix, f"v{SCHEMA_VERSION}", *map(str, parts)))

    def load_second(self, unix_second: int) -> str:
        return self._k("load", "s", unix_second)

    def load_minute(self, unix_minute: int) -> str:
        return self._k("load", "m", unix_minute)

    @property
    def observations(self) -> str:
        return self._k("observations")

    @property
    def plan(self) -> str:
        return self._k("plan")

    @property
    def plan_seq(self) -> str:
        return self._k("plan", "seq")

    @property
    def plan_events(self) -> str:
        return self._k("plan", "events")

    @property
    def planner_leader(self) -> str:
        return self._k("planner", "leader")

    @property
    def instances(self) -> str:
        return self._k("instances")

    @property
    def instance_events(self) -> str:
        return self._k("instances", "events")

    def heartbeat(self, node: str) -> str:
        return self._k("node", node, "heartbeat")

    def telemetry(self, node: str) -> str:
        return self._k("node", node, "telemetry")

    @property
    def nodes(self) -> str:
        return self._k("nodes")

    @property
    def energy(self) -> str:
        return self._k("energy")

    def energy_minute(self, unix_minute: int) -> str:
        return self._k("energy", "m", unix_minute)

    def energy_work(self, instance: str, unix_minute: int) -> str:
        return self._k("energy", "w", instance, unix_minute)

    def energy_marks(self, instance: str) -> str:
        return self._k("energy", "mark", instance)

    def energy_idle(self, instance: str, unix_minute: int) -> str:
        return self._k("energy", "idle", instance, unix_minute)

    @property
    def classifier_model(self) -> str:
        return self._k("classifier", "model")

    @property
    def classifier_version(self) -> str:
        return self._k("classifier", "version")


def load_field(pool: str, name: str) -> str:
    """Hash field of a load window: ``SS:requests``."""
    if name not in LOAD_FIELDS:
        raise ContractError(f"unknown load field {name!r}")
    return f"{pool}:{name}"


class Source(enum.StrEnum):
    """Where a number comes from. Every figure wattgate reports carries one."""

    MEASURED = "measured"  # NVML counters, timers
    MODELLED = "modelled"  # computed from a profile


class InstanceState(enum.StrEnum):
    STARTING = "starting"  # launching, or waking from sleep: not routed yet
    READY = "ready"  # the only state gateways route to
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"
    ASLEEP = "asleep"  # on standby: the process runs with its weights offloaded (vLLM sleep mode), not routed


T = TypeVar("T")


def _check_schema(data: dict[str, Any], kind: str) -> None:
    if not isinstance(data, dict):
        raise ContractError(f"{kind}: expected a JSON object")
    version = data.get("schema")
    if version != SCHEMA_VERSION:
        raise ContractError(f"{kind}: schema version {version!r}, this wattgate speaks {SCHEMA_VERSION}")


def _decode(raw: str | bytes | dict[str, Any], kind: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractError(f"{kind}: not valid JSON") from exc
    _check_schema(data, kind)
    return data


def _build(cls: type[T], data: dict[str, Any], kind: str) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ContractError(f"{kind}: {exc}") from exc


class _Message:
    """JSON (de)serialisation shared by every message dataclass below."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        out["schema"] = SCHEMA_VERSION
        return out  # type: ignore[no-any-return]

    def to_json(self) -> str:
        # the same JSON as to_dict's; where to_dict is this class's own, without asdict's deep copy of every value
        # (observations are written on the request path): nested dataclasses (GPU readings, unmanaged servers)
        # are serialised as they come. A message that shapes its dict (Plan) goes through its to_dict.
        if type(self).to_dict is not _Message.to_dict:
            return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)
        return json.dumps(
            {**vars(self), "schema": SCHEMA_VERSION}, separators=(",", ":"), sort_keys=True, default=_fields_of
        )


def _fields_of(value: object) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return vars(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass(frozen=True)
class Observation(_Message):
    """One finished request, as recorded by a gateway. Holds features, never prompt text."""

    request_id: str
    pool: str  # the pool that served it
    predicted_type: str  # the request type the gateway predicted
    output_probs: list[float]  # P(output class S, M, L)
    input_tokens: int
    output_tokens: int
    ttft_s: float | None
    tbt_s: float | None  # mean time between tokens over the stream, None for < 2 tokens
    status: int
    instance: str
    model: str
    ts: float  # unix time the request finished
    features: dict[str, float] = field(default_factory=dict)  # classifier features (no text)
    max_tokens: int | None = None
    # Revision 2: the hashed uni/bigram slots of the last user message's first token ids (``encode_slots``:
    # base64 of little-endian uint16), so adaptation can refit the text model without the text. Empty when
    # the gateway keeps no slots (``classifier_text_slots: false``); ``text_dim`` is the hash space size.
    text_slots: str = ""
    text_dim: int = 0
    revision: int = 1  # a message without the field predates revision 2; revision-2 writers set it
    # Revision 3: the energy attributed to the request when it ended (an estimate: its last interval closes
    # later; the energy metrics and minutes reconcile it) and its source (measured | modelled); None: unknown
    energy_j: float | None = None
    energy_source: str | None = None

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> Observation:
        obs = _build(cls, _decode(raw, "observation"), "observation")
        if not isinstance(obs.text_slots, str) or not isinstance(obs.text_dim, int):
            raise ContractError("observation: text_slots must be a string and text_dim an integer")
        return obs

    def slots(self) -> list[int]:
        """The decoded text slots (empty when none were kept); ``ContractError`` if they are malformed."""
        return decode_slots(self.text_slots, self.text_dim)


def encode_slots(slots: Any) -> str:
    """Text slots (ints in [0, 65536)) as base64 of little-endian uint16: ~2.7 characters a slot."""
    arr = array("H", slots)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_slots(text: str, dim: int) -> list[int]:
    if not text:
        return []
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ContractError("observation: text_slots is not valid base64") from exc
    if len(raw) % 2:
        raise ContractError("observation: text_slots has an odd byte count")
    arr = array("H")
    arr.frombytes(raw)
    if sys.byteorder != "little":
        arr.byteswap()
    out = arr.tolist()
    if not 0 < dim <= 1 << 16 or (out and max(out) >= dim):
        raise ContractError(f"observation: text slots outside the text_dim {dim}")
    return out


@dataclass(frozen=True)
class InstanceRecord(_Message):
    """An engine instance as gateways see it. Gateways route only to ``state == ready``."""

    id: str
    base_url: str  # e.g. http://10.0.0.5:8001 (the gateway adds /v1/...)
    model: str
    pool: str  # the pool this instance serves
    node: str
    state: str  # InstanceState value
    tp: int = 1
    gpus: list[int] = field(default_factory=list)
    sm_clock_mhz: int | None = None
    max_concurrency: int = 256
    engine: str = "external"  # vllm | tgi | simulated | external
    updated_at: float = 0.0
    api_key_env: str | None = None  # name of an environment variable holding the backend's key

    @property
    def ready(self) -> bool:
        return self.state == InstanceState.READY

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> InstanceRecord:
        rec = _build(cls, _decode(raw, "instance"), "instance")
        if rec.state not in {s.value for s in InstanceState}:
            raise ContractError(f"instance {rec.id}: unknown state {rec.state!r}")
        return rec

    @classmethod
    def registry(cls, raw: dict[Any, Any], skip: Callable[[Any, ContractError], None]) -> list[InstanceRecord]:
        """The records of a registry hash (``HGETALL`` of ``Keys.instances``); ``skip(key, error)`` is told of each
        field that is not a valid record, which is left out."""
        out = []
        for key, value in raw.items():
            try:
                out.append(cls.from_json(value))
            except ContractError as exc:
                skip(key, exc)
        return out


@dataclass(frozen=True)
class PlannedInstance:
    """One instance of the plan: where it runs, its tensor parallelism and SM clock (for a fixed instance,
    one the plan cannot start or stop, only the pool it serves and its clock are the plan's choice).

    ``standby`` (revision 3): keep the instance loaded but asleep (warm standby) instead of serving. An agent
    whose node has sleep mode (``Heartbeat.sleep_mode``) starts it and puts it to sleep, or drains a serving
    one and puts it to sleep; its record says ``asleep`` and gateways do not route to it. Planned active again
    (``standby`` false, same id, pool, GPUs and TP), it is woken in place (seconds, no weight reload) and
    registered ready. On a node without sleep mode a standby instance is not run (kept stopped) and the
    heartbeat says so. Changing its pool, GPUs or TP is a restart, as for any instance. Never set on a fixed
    instance.

    ``clock_floor_mhz`` (revision 4): the reactive path's clock floor (``planner.reactive``), written by the
    planner leader between plans into an amendment of the current plan: the instance's clock is at least this
    (snapped up to a clock its GPUs support), whatever the agent's clock loop would choose; 0: none. A plan
    amendment without it (the hold ended) gives the clock back to the clock loop (or to ``sm_clock_mhz``).
    """

    id: str
    pool: str
    node: str
    gpus: list[int]
    tp: int
    sm_clock_mhz: int
    load_rps: float  # planned load per instance, requests/s
    power_w: float  # modelled from the profile
    standby: bool = False
    clock_floor_mhz: int = 0

    @property
    def clock_target_mhz(self) -> int:
        """The clock to run at without a clock loop: the plan's, or the floor when it is higher."""
        return max(self.sm_clock_mhz, self.clock_floor_mhz)


@dataclass(frozen=True)
class Plan(_Message):
    """A versioned plan published by the planner leader."""

    version: int
    created_at: float
    model: str
    instances: list[PlannedInstance]
    forecast_rps: dict[str, float]  # pool -> forecast peak load
    predicted_power_w: float  # modelled
    baseline_power_w: float  # modelled: all TP8 at max clock for the same load
    reasons: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    source: str = Source.MODELLED.value
    # pool -> request types it serves (its own and those spilled into it, all or nothing); empty in
    # plans from before this field: then each pool serves its own type only
    serves: dict[str, list[str]] = field(default_factory=dict)
    # share of each instance's SLO-feasible capacity the plan loads it to; agents' clock policy keeps the
    # same share free (1.0 in plans from before this field)
    headroom: float = 1.0
    # modelled: one pool of TP8 instances at max clock carrying the same load, plus 70 W for each other GPU
    # of the cluster (DynamoLLM's single-pool baseline); None in plans from before these fields
    single_pool_power_w: float | None = None
    single_pool_gpus: int | None = None
    # Revision 2: ids of the instances the planner may not start, stop or move (servers wattgate does not
    # manage, from the agents' heartbeats): the plan chooses their pool and clock only
    fixed: list[str] = field(default_factory=list)
    revision: int = 1  # a message without the field predates revision 2; writers set the current revision

    def for_node(self, node: str) -> list[PlannedInstance]:
        return [i for i in self.instances if i.node == node]

    def fixed_pools(self) -> dict[str, str]:
        """Fixed instance id -> the pool the plan has it serve."""
        ids = set(self.fixed)
        return {i.id: i.pool for i in self.instances if i.id in ids}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for inst in out["instances"]:
            if not inst.get("standby"):
                del inst["standby"]  # plans without standby instances read as before it
            if not inst.get("clock_floor_mhz"):
                del inst["clock_floor_mhz"]  # nor without clock floors
        return out

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> Plan:
        data = dict(_decode(raw, "plan"))
        listed = data.get("instances", [])
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise ContractError("plan: instances must be a list of objects")
        data["instances"] = [_build(PlannedInstance, i, "plan: bad instance") for i in listed]
        for inst in data["instances"]:
            if not isinstance(inst.standby, bool):
                raise ContractError(f"plan: instance {inst.id}: standby must be true or false, got {inst.standby!r}")
            floor = inst.clock_floor_mhz
            if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
                raise ContractError(f"plan: instance {inst.id}: clock_floor_mhz must be an integer >= 0, got {floor!r}")
        plan = _build(cls, data, "plan")
        h = plan.headroom
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < h <= 1:
            raise ContractError(f"plan: headroom must be a number in (0, 1], got {h!r}")
        return plan


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    power_w: float
    energy_j: float
    sm_clock_mhz: int
    locked_clock_mhz: int | None
    source: str  # Source value: measured for NVML, modelled for simulated GPUs


@dataclass(frozen=True)
class NodeTelemetry(_Message):
    node: str
    ts: float
    gpus: list[GpuReading]
    instances: dict[str, str]  # instance id -> InstanceState value

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> NodeTelemetry:
        data = dict(_decode(raw, "telemetry"))
        try:
            data["gpus"] = [GpuReading(**g) for g in data.get("gpus", [])]
        except TypeError as exc:
            raise ContractError(f"telemetry: bad GPU reading: {exc}") from exc
        return _build(cls, data, "telemetry")


@dataclass(frozen=True)
class UnmanagedInstance:
    """A server the user runs on a node and wattgate does not start or stop (``wattgate agent --external``):
    the planner counts it as fixed capacity and chooses only its pool and clock."""

    id: str
    tp: int
    gpus: list[int]  # node-local GPU indices
    model: str = ""  # the model it serves, as clients name it ("" unknown)
    engine: str = "vllm"  # what serves it: vllm | tgi | llama.cpp | simulated
    pool: str = ""  # the pool it serves now ("" none yet: every request type)


@dataclass(frozen=True)
class Heartbeat(_Message):
    node: str
    ts: float
    plan_version: int | None
    gpu_count: int
    clock_control: bool  # False: observe-only (no privilege to lock clocks)
    notes: list[str] = field(default_factory=list)
    # False: the node runs external (unmanaged) instances only and its agent does not carry out plans,
    # so the planner must not plan instances onto its GPUs
    managed: bool = True
    # Revision 2: the node's unmanaged servers
    unmanaged: list[UnmanagedInstance] = field(default_factory=list)
    revision: int = 1  # a message without the field predates revision 2; writers set the current revision
    # Revision 3: True when the node's engines can sleep (vLLM with --sleep-mode, and no sleep has failed),
    # so the plan may mark its instances standby
    sleep_mode: bool = False
    # Revision 3: ids of this node's instances asleep now (on standby)
    asleep: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> Heartbeat:
        data = dict(_decode(raw, "heartbeat"))
        listed = data.get("unmanaged", [])
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise ContractError("heartbeat: unmanaged must be a list of objects")
        data["unmanaged"] = [_build(UnmanagedInstance, i, "heartbeat: bad unmanaged instance") for i in listed]
        return _build(cls, data, "heartbeat")


@dataclass(frozen=True)
class InstanceEnergy(_Message):
    """One instance's energy counter, written by its agent every second into ``Keys.energy``.

    ``energy_j`` is the sum of the total-energy counters of the instance's GPUs at ``ts`` (unix seconds):
    NVML's ``nvmlDeviceGetTotalEnergyConsumption`` on a real GPU (``source`` measured, origin: driver load)
    or a simulated GPU's counter (``source`` modelled). Readers use differences only; a counter that went
    down (driver reload, a new simulated GPU) starts a new series."""

    instance: str
    node: str
    ts: float
    energy_j: float
    power_w: float  # the GPUs' power at ts (W), the same source
    source: str  # Source value
    gpus: list[int] = field(default_factory=list)  # node-local GPU indices

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> InstanceEnergy:
        e = _build(cls, _decode(raw, "energy"), "energy")
        if e.source not in {s.value for s in Source}:
            raise ContractError(f"energy {e.instance}: unknown source {e.source!r}")
        for name in ("ts", "energy_j", "power_w"):
            value = getattr(e, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ContractError(f"energy {e.instance}: {name} must be a number >= 0, got {value!r}")
        return e


def energy_field(name: str, *labels: str) -> str:
    """Hash field of an energy minute: a JSON array ``[name, model, key, pool, status, source]`` (model names
    may hold any character, so no separator is safe)."""
    if name not in ENERGY_FIELDS:
        raise ContractError(f"unknown energy field {name!r}")
    if len(labels) != 5:
        raise ContractError("an energy field has five labels: model, key, pool, status, source")
    return json.dumps([name, *labels], separators=(",", ":"))


def parse_energy_field(raw: str | bytes) -> tuple[str, str, str, str, str, str]:
    """``energy_field``'s parts; ``ContractError`` for anything else."""
    try:
        parts = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"energy field {raw!r} is not JSON") from exc
    if not isinstance(parts, list) or len(parts) != 6 or not all(isinstance(p, str) for p in parts):
        raise ContractError(f"energy field {raw!r} is not [name, model, key, pool, status, source]")
    if parts[0] not in ENERGY_FIELDS:
        raise ContractError(f"unknown energy field {parts[0]!r}")
    return parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]
