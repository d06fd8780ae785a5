"""The gateway's one settings object: parsed once from a YAML file, the environment and flags, then validated.

Precedence: defaults < config file < environment (``WATTGATE_*``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wattgate.gateway.errors import ConfigError
from wattgate.profiles.classes import POOL_NAMES, ClassEdges, ProfilesError


@dataclass(frozen=True)
class BackendSpec:
    """A static, unmanaged OpenAI-compatible server the user listed (vLLM, TGI, llama.cpp, ...)."""

    url: str  # base URL without /v1, e.g. http://10.0.0.5:8000
    id: str = ""
    models: tuple[str, ...] = ()  # empty: ask the backend's /v1/models
    pool: str | None = None  # None: serves every pool
    api_key: str | None = None  # sent to this backend only
    max_concurrency: int = 256
    health_path: str = "/health"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    backends: tuple[BackendSpec, ...] = ()
    redis_url: str | None = None
    redis_prefix: str = "wg"
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 8 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    write_timeout_s: float = 30.0
    pool_timeout_s: float = 10.0
    max_connections: int = 2000
    max_keepalive_connections: int = 500
    keepalive_expiry_s: float = 30.0
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    eject_cooldown_s: float = 10.0
    eject_after_failures: int = 3
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

    def __post_init__(self) -> None:
        _validate(self)


def _validate(s: GatewaySettings) -> None:
    if not 0 < s.port < 65536:
        raise ConfigError(f"port must be 1..65535, got {s.port}")
    positive = (
        "max_body_bytes connect_timeout_s read_timeout_s write_timeout_s pool_timeout_s max_connections "
        "health_interval_s health_timeout_s record_buffer flush_interval_s registry_refresh_s redis_timeout_s "
        "eject_after_failures classifier_poll_s"
    )
    for name in positive.split():
        if not getattr(s, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(s, name)!r}")
    for name in ("eject_cooldown_s", "retry_after_s", "max_keepalive_connections", "keepalive_expiry_s"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(s, name)!r}")
    if s.redis_url is not None and urlsplit(s.redis_url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"redis_url must start with redis://, rediss:// or unix://, got {_redact(s.redis_url)}")
    if s.classifier not in {"model", "max_tokens"}:
        raise ConfigError(f"classifier must be 'model' or 'max_tokens', got {s.classifier!r}")
    if s.log_level not in {"critical", "error", "warning", "info", "debug"}:
        raise ConfigError(f"log_level must be one of critical/error/warning/info/debug, got {s.log_level!r}")
    ids = [b.id for b in s.backends]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"backend ids must be unique, got {ids}")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


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
        max_concurrency=max_conc,
        health_path=str(raw.get("health_path", "/health")),
    )


def _coerce(name: str, value: Any) -> Any:
    default = getattr(GatewaySettings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a {type(default).__name__}, got {value!r}") from None
    return value if value is None else str(value)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend_args: tuple[str, ...] = (),
) -> GatewaySettings:
    """Merge file, environment and flags (in that order of precedence, lowest first) into one settings object."""
    raw: dict[str, Any] = _read_file(config_file) if config_file else {}
    env = os.environ if env is None else env
    scalar_names = [
        f.name for f in dataclasses.fields(GatewaySettings) if f.name not in {"backends", "edges", "api_keys"}
    ]
    for name in scalar_names:
        key = f"WATTGATE_{name.upper()}"
        if key in env:
            raw[name] = env[key]
    if env.get("WATTGATE_API_KEYS"):
        raw["api_keys"] = [k for k in env["WATTGATE_API_KEYS"].split(",") if k]
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return _build(raw, backend_args)


def _read_file(path: str | Path) -> dict[str, Any]:
    import yaml  # noqa: PLC0415  (only when a config file is given)

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must be a mapping of option: value")
    return doc


def _build(raw: dict[str, Any], backend_args: tuple[str, ...]) -> GatewaySettings:
    names = {f.name for f in dataclasses.fields(GatewaySettings)} | {"class_edges", "api_keys_env"}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; see the Gateway section of README.md")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name in {"backends", "class_edges", "edges", "api_keys", "api_keys_env"}:
            continue
        kwargs[name] = _coerce(name, value)
    listed = raw.get("backends") or []
    if not isinstance(listed, list) or not all(isinstance(b, dict) for b in listed):
        raise ConfigError("backends: expected a list of mappings with at least a url")
    specs = [backend_from_mapping(b, i) for i, b in enumerate(listed)]
    specs += [parse_backend(t, len(specs) + i) for i, t in enumerate(backend_args)]
    kwargs["backends"] = tuple(specs)
    keys = raw.get("api_keys") or []
    if isinstance(keys, str):
        keys = [keys]
    if raw.get("api_keys_env"):
        value = os.environ.get(str(raw["api_keys_env"]))
        if value is None:
            raise ConfigError(f"api_keys_env: environment variable {raw['api_keys_env']} is not set")
        keys = [*keys, *value.split(",")]
    kwargs["api_keys"] = frozenset(str(k) for k in keys if k)
    edges = raw.get("class_edges") or raw.get("edges")
    if edges is not None:
        try:
            kwargs["edges"] = ClassEdges(**edges)
        except (TypeError, ProfilesError) as exc:
            raise ConfigError(f"class_edges: {exc}") from None
    try:
        return GatewaySettings(**kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
