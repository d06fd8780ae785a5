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

from wattgate.gateway.errors import ConfigError
from wattgate.profiles.classes import POOL_NAMES, ClassEdges
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
        raise ConfigError(f"redis_url must start with redis://, rediss:// or unix://, got {redact_url(s.redis_url)}")
    if s.classifier not in {"model", "max_tokens"}:
        raise ConfigError(f"classifier must be 'model' or 'max_tokens', got {s.classifier!r}")
    if s.log_level not in {"critical", "error", "warning", "info", "debug"}:
        raise ConfigError(f"log_level must be one of critical/error/warning/info/debug, got {s.log_level!r}")
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


def from_values(v: Any, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """``GatewaySettings`` from the parsed options of ``wattgate gateway`` (``wattgate.settings``)."""
    env = os.environ if env is None else env
    keys = list(v.api_keys)
    if v.api_keys_env:
        value = env.get(v.api_keys_env)
        if value is None:
            raise ConfigError(f"api_keys_env: environment variable {v.api_keys_env} is not set")
        keys += [k.strip() for k in value.split(",") if k.strip()]
    names = {f.name for f in dataclasses.fields(GatewaySettings)}
    kwargs = {k: val for k, val in v.as_dict().items() if k in names}
    kwargs["edges"] = v.class_edges
    kwargs["api_keys"] = frozenset(keys)
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
