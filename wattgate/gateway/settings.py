"""The gateway's one settings object, built once at start from its parsed options (``gateway/options.py``).

Precedence (``wattgate.settings``): defaults < config file < environment (``WATTGATE_*``) < flags.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wattgate.carbon import CarbonError, CarbonIntensity, constant, parse_carbon
from wattgate.gateway.errors import ConfigError
from wattgate.profiles.classes import POOL_NAMES, ClassEdges, ProfilesError, RequestType
from wattgate.settings.common import redact_url


@dataclass(frozen=True)
class BackendSpec:
    """A static, unmanaged OpenAI-compatible server the user listed (vLLM, TGI, llama.cpp, ...)."""

    url: str  # base URL without /v1, e.g. http://10.0.0.5:8000
    id: str = ""
    models: tuple[str, ...] = ()  # empty: ask the backend's /v1/models
    pool: str | None = None  # None: serves every pool
    api_key: str | None = None  # sent to this backend only
    api_key_env: str | None = None  # the environment variable api_key came from
    max_concurrency: int = 256
    health_path: str = "/health"


@dataclass(frozen=True)
class Deadline:
    """How long one request may take: until its first byte (a stream's first event), and in all."""

    first_byte_s: float
    total_s: float


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    backends: tuple[BackendSpec, ...] = ()
    redis_url: str | None = None
    redis_prefix: str = "wg"
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 128  # deeper request bodies get a 400 (Python's parser recurses)
    # the client side (the front door); nginx: client_header_timeout, client_body_timeout 60 s
    client_header_timeout_s: float = 60.0  # a connection's request head, from its first byte (or connect)
    client_body_timeout_s: float = 60.0  # between two reads of a request body
    client_keepalive_timeout_s: float = 5.0  # idle keep-alive connection
    max_header_bytes: int = 60 * 1024  # request line + headers (Envoy max_request_headers_kb: 60); 431 above
    max_client_connections: int = 0  # 0: (file limit - 64) / 2, since a request may need an upstream socket too
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0  # between upstream bytes once the answer has begun (nginx proxy_read_timeout)
    first_byte_timeout_s: float = 60.0  # a stream's first event (non-streamed answers: request_timeout_s)
    request_timeout_s: float = 300.0  # the whole request, retries included
    class_deadlines: tuple[tuple[str, Deadline], ...] = ()  # request type -> its own deadline
    max_response_bytes: int = 64 * 1024 * 1024  # a non-streamed answer is buffered: larger gets 502
    write_timeout_s: float = 30.0
    pool_timeout_s: float = 10.0
    max_connections: int = 2000
    max_keepalive_connections: int = 500
    keepalive_expiry_s: float = 30.0
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    eject_cooldown_s: float = 10.0
    eject_after_failures: int = 3
    max_ejection_percent: float = 10.0  # of a pool's instances ejected at once; one may always be (Envoy)
    panic_threshold_percent: float = 50.0  # below this share routable, a pool's other instances are used too
    admission_window_s: float = 0.0  # routing.plan_limits: an instance is full at planned req/s x this (0: off)
    spill_any: bool = False  # routing.choose: a full route spills to any pool's instance with room
    retry_after_s: int = 1
    request_usage_in_stream: bool = True
    record_buffer: int = 10_000
    flush_interval_s: float = 0.25
    registry_refresh_s: float = 5.0
    redis_timeout_s: float = 1.0
    edges: ClassEdges = field(default_factory=ClassEdges)
    classifier: str = "model"  # model: the shipped trained classifier; max_tokens: the fallback only
    classifier_poll_s: float = 10.0  # how often to look for a newer classifier version in Redis
    classifier_text_slots: bool = True  # Observations keep the prompt's hashed n-gram slots (README: privacy)
    log_level: str = "info"
    access_log: bool = False
    forward_headers: tuple[str, ...] = ()  # request headers passed to backends besides the built-in list
    admin_api_keys: frozenset[str] = frozenset()  # keys for /metrics and the dashboard (none: the client keys)
    protect_metrics: bool = False  # /metrics needs a key (Prometheus convention: open)
    protect_dashboard: bool = True  # /dashboard needs a key when any key is configured
    # energy per request (README: Energy per request): names for API-key labels (key-<12 hex>=NAME; others are
    # labelled by their hash), the carbon intensity (gCO2e per kWh) and how long a request may hold its
    # instance's intervals open before they settle with its work so far
    energy_key_names: tuple[str, ...] = ()
    energy_carbon_g_per_kwh: CarbonIntensity = field(default_factory=lambda: constant(475.0))  # or a series
    energy_max_open_s: float = 600.0
    energy_prefill_weight: float = 0.1  # a prompt token's work against an output token's (bench/energy_attribution.py)
    energy_interval_s: float = 1.0

    def deadline(self, request_type: str | None) -> Deadline:
        """The deadline of a request of ``request_type`` (None: embeddings): its class's, else the defaults."""
        for name, deadline in self.class_deadlines:
            if name == request_type:
                return deadline
        return Deadline(self.first_byte_timeout_s, self.request_timeout_s)

    def __post_init__(self) -> None:
        _validate(self)


def _validate(s: GatewaySettings) -> None:
    if not 0 < s.port < 65536:
        raise ConfigError(f"port must be 1..65535, got {s.port}")
    positive = (
        "max_body_bytes connect_timeout_s read_timeout_s write_timeout_s pool_timeout_s max_connections "
        "health_interval_s health_timeout_s record_buffer flush_interval_s registry_refresh_s redis_timeout_s "
        "eject_after_failures classifier_poll_s max_json_depth client_header_timeout_s client_body_timeout_s "
        "max_header_bytes first_byte_timeout_s request_timeout_s max_response_bytes"
    )
    for name in positive.split():
        if not getattr(s, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(s, name)!r}")
    for name in (
        "eject_cooldown_s",
        "retry_after_s",
        "max_keepalive_connections",
        "keepalive_expiry_s",
        "client_keepalive_timeout_s",
        "max_client_connections",
    ):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(s, name)!r}")
    if s.redis_url is not None and urlsplit(s.redis_url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"redis_url must start with redis://, rediss:// or unix://, got {redact_url(s.redis_url)}")
    if s.classifier not in {"model", "max_tokens"}:
        raise ConfigError(f"classifier must be 'model' or 'max_tokens', got {s.classifier!r}")
    if s.log_level not in {"critical", "error", "warning", "info", "debug"}:
        raise ConfigError(f"log_level must be one of critical/error/warning/info/debug, got {s.log_level!r}")
    for name in ("max_ejection_percent", "panic_threshold_percent"):
        if not 0 <= getattr(s, name) <= 100:
            raise ConfigError(f"{name} must be 0..100, got {getattr(s, name)!r}")
    for name in s.forward_headers:
        if not name or not name.isascii() or any(c in name for c in " :\t\r\n"):
            raise ConfigError(f"forward_headers: {name!r} is not a header name")
    if s.protect_metrics and not (s.api_keys or s.admin_api_keys):
        raise ConfigError("protect_metrics needs api_keys or admin_api_keys")
    try:  # a number or a file's path (tests, embedding) becomes the intensity the option parser gives
        object.__setattr__(s, "energy_carbon_g_per_kwh", parse_carbon(s.energy_carbon_g_per_kwh))
    except CarbonError as exc:
        raise ConfigError(f"energy_carbon_g_per_kwh: {exc}") from None
    if not s.energy_prefill_weight >= 0:
        raise ConfigError("energy_prefill_weight must be >= 0")
    if not (s.energy_max_open_s > 0 and s.energy_interval_s > 0):
        raise ConfigError("energy_max_open_s and energy_interval_s must be > 0")
    for item in s.energy_key_names:
        label, sep, name = item.partition("=")
        if not sep or not label.startswith("key-") or len(label) != 16 or not name:
            raise ConfigError(f"energy_key_names: {item!r} is not key-<12 hex digits>=NAME")
    ids = [b.id for b in s.backends]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"backend ids must be unique, got {ids}")


def parse_backend(text: str, index: int = 0) -> BackendSpec:
    """``URL[#model=NAME,pool=SS,max_concurrency=64,api_key_env=VAR,id=a,health_path=/health]``."""
    url, _, hints = text.partition("#")
    opts: dict[str, Any] = {}
    for item in filter(None, (h.strip() for h in hints.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"backend {text!r}: hint {item!r} is not key=value")
        opts[key.strip()] = value.strip()
    return backend_from_mapping({"url": url, **opts}, index)


def backend_from_mapping(raw: Mapping[str, Any], index: int) -> BackendSpec:
    known = {"url", "id", "model", "models", "pool", "api_key", "api_key_env", "max_concurrency", "health_path"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"backend #{index + 1}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    url = str(raw.get("url", "")).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"backend #{index + 1}: url must be http(s)://host:port, got {url!r}")
    if url.endswith("/v1"):
        url = url[:-3]
    models = raw.get("models") or ([raw["model"]] if raw.get("model") else [])
    if isinstance(models, str):
        models = models.split("|")
    pool = raw.get("pool")
    if pool is not None:
        pool = str(pool).upper()
        if pool not in POOL_NAMES:
            raise ConfigError(f"backend {url}: pool must be one of {', '.join(POOL_NAMES)}, got {raw['pool']!r}")
    api_key = raw.get("api_key")
    if raw.get("api_key_env"):
        api_key = os.environ.get(str(raw["api_key_env"]))
        if api_key is None:
            raise ConfigError(f"backend {url}: environment variable {raw['api_key_env']} is not set")
    try:
        max_conc = int(raw.get("max_concurrency", 256))
    except (TypeError, ValueError):
        raise ConfigError(f"backend {url}: max_concurrency must be an integer") from None
    if max_conc <= 0:
        raise ConfigError(f"backend {url}: max_concurrency must be > 0")
    return BackendSpec(
        url=url,
        id=str(raw.get("id") or f"static-{index + 1}"),
        models=tuple(str(m) for m in models),
        pool=pool,
        api_key=api_key,
        api_key_env=str(raw["api_key_env"]) if raw.get("api_key_env") else None,
        max_concurrency=max_conc,
        health_path=str(raw.get("health_path", "/health")),
    )


def parse_class_deadlines(value: Any, first_byte_s: float, total_s: float) -> tuple[tuple[str, Deadline], ...]:
    """``SS=10/60,LL=/1800`` (first byte / total seconds; an empty side keeps the default) or, in YAML,
    ``{SS: {first_byte_s: 10, total_s: 60}}``, into (request type, deadline) pairs."""
    if isinstance(value, str):
        pairs: dict[str, Any] = {}
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, sep, times = item.partition("=")
            first, _, total = times.partition("/")
            if not sep:
                raise ConfigError(f"class_deadlines: {item!r} is not TYPE=FIRST_BYTE_S/TOTAL_S")
            pairs[name] = {k: v for k, v in (("first_byte_s", first), ("total_s", total)) if v.strip()}
        value = pairs
    if not isinstance(value, Mapping):
        raise ConfigError("class_deadlines: expected TYPE=FIRST_BYTE_S/TOTAL_S,... or a mapping")
    out = []
    for name, times in value.items():
        try:
            rtype = RequestType.parse(str(name)).name
        except ProfilesError as exc:
            raise ConfigError(f"class_deadlines: {exc}") from None
        if not isinstance(times, Mapping) or set(times) - {"first_byte_s", "total_s"}:
            raise ConfigError(f"class_deadlines.{rtype}: expected {{first_byte_s: S, total_s: S}}, got {times!r}")
        try:
            deadline = Deadline(float(times.get("first_byte_s", first_byte_s)), float(times.get("total_s", total_s)))
        except (TypeError, ValueError):
            raise ConfigError(f"class_deadlines.{rtype}: seconds must be numbers, got {times!r}") from None
        if not (deadline.first_byte_s > 0 and deadline.total_s > 0):
            raise ConfigError(f"class_deadlines.{rtype}: seconds must be > 0")
        out.append((rtype, deadline))
    return tuple(sorted(out))


def _keys(v: Any, env: Mapping[str, str], name: str) -> frozenset[str]:
    """The keys of option ``name`` plus the comma-separated keys in the variable ``<name>_env`` names (an unset
    or empty one is an error, never an open gateway)."""
    keys = list(v[name])
    var = v[f"{name}_env"]
    if var:
        value = env.get(var)
        if value is None:
            raise ConfigError(f"{name}_env: environment variable {var} is not set")
        named = [k.strip() for k in value.split(",") if k.strip()]
        if not named:  # asked for key checks and given none: refuse rather than serve an open gateway
            raise ConfigError(f"{name}_env: environment variable {var} holds no key")
        keys += named
    return frozenset(keys)


def from_values(v: Any, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """``GatewaySettings`` from the parsed options of ``wattgate gateway`` (``gateway/options.py``)."""
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(GatewaySettings)}
    kwargs = {k: val for k, val in v.as_dict().items() if k in names}
    kwargs["edges"] = v.class_edges
    kwargs["api_keys"] = _keys(v, env, "api_keys")
    kwargs["admin_api_keys"] = _keys(v, env, "admin_api_keys")
    kwargs["forward_headers"] = tuple(h.lower() for h in v.forward_headers)
    kwargs["class_deadlines"] = parse_class_deadlines(
        v.class_deadlines or {}, v.first_byte_timeout_s, v.request_timeout_s
    )
    return GatewaySettings(**kwargs)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend_args: tuple[str, ...] = (),
) -> GatewaySettings:
    """What ``wattgate gateway`` would run with: the file, then ``env`` (default: the process's environment),
    then ``overrides`` (option name -> value, as flags) and ``backend_args`` (as ``--backend`` flags)."""
    from wattgate.gateway.cli import COMMAND  # noqa: PLC0415  (the option list lives with the command)
    from wattgate.settings.model import SettingsError  # noqa: PLC0415
    from wattgate.settings.parse import known_env, resolve  # noqa: PLC0415

    env = os.environ if env is None else env
    given: dict[str, Any] = {k: val for k, val in (overrides or {}).items() if val is not None}
    if config_file:
        given["config"] = str(config_file)
    if backend_args:
        given["backends"] = list(backend_args)
    try:
        return from_values(resolve(COMMAND, given, env, known_env=known_env()), env)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
