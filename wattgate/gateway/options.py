"""The gateway's options (``wattgate gateway``): one line each; ``settings.from_values`` builds ``GatewaySettings``.

To add one: a field in ``GatewaySettings`` and an ``Option`` of the same name and default here (the test
``tests/test_settings_model.py`` checks that they agree); the flag, ``WATTGATE_<NAME>``, the YAML key,
``--help`` and the README table follow. Only the settings model is imported here, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import Kind, boolean, choice, custom, integer, listof, number, text
from wattgate.settings.model import Option


def _backends(raw: Any) -> tuple[Any, ...]:
    from wattgate.gateway.errors import ConfigError  # noqa: PLC0415  (starlette: only when backends are given)
    from wattgate.gateway.settings import backend_from_mapping, parse_backend  # noqa: PLC0415

    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of URL[#hints] or of mappings with at least a url")
    specs = []
    try:
        for i, item in enumerate(items):
            if isinstance(item, dict):
                specs.append(backend_from_mapping(item, i))
            elif isinstance(item, str):
                specs.append(parse_backend(item, i))
            else:
                raise ValueError(f"backend #{i + 1}: expected URL[#hints] or a mapping, got {item!r}")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    ids = [b.id for b in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"backend ids must be unique, got {ids}")
    return tuple(specs)


def _show_backends(value: Any) -> str:
    return " ".join(b.url + (f"#model={'|'.join(b.models)}" if b.models else "") for b in value) or "none"


def _backend_env_names(value: Any) -> Iterable[str]:
    return [b.api_key_env for b in value if b.api_key_env]


BACKENDS = Option(
    "backends",
    custom(
        "URL[#hints], repeatable (environment: space-separated; YAML: a list)",
        _backends,
        _show_backends,
        metavar="URL[#hints]",
        repeat=True,
        names_env=_backend_env_names,
    ),
    (),
    "existing OpenAI-compatible servers; hints after #: model=NAME (or models=A|B), pool=SS, max_concurrency=N "
    "(256), api_key_env=VAR, api_key=KEY, id=NAME, health_path=/health",
    flag="--backend",
    default_text="none",
    example="http://127.0.0.1:9#model=m",
)


def _show_keys(value: Any) -> str:
    return f"{len(value)} key(s), not shown" if value else "none"


API_KEYS = Option(
    "api_keys",
    dataclasses.replace(
        listof(text(nonempty=True), repeat=True, label="key, repeatable (environment and text: comma-separated)"),
        show=_show_keys,
        metavar="KEY",
    ),
    (),
    "client keys accepted (Authorization: Bearer KEY or api-key: KEY); none: no key check",
    flag="--api-key",
    default_text="none",
    example="k1,k2",
)


def _names_itself(value: Any) -> Iterable[str]:
    return [str(value)] if value else []


API_KEYS_ENV = Option(
    "api_keys_env",
    Kind("environment variable name", text().convert, names_env=_names_itself, metavar="VAR"),
    "",
    "environment variable holding more comma-separated client keys (an unset one is an error)",
    default_text="none",
    example="MY_KEYS",
)


def _opt(name: str, kind: Kind, default: Any, meaning: str, example: str = "") -> Option:
    return Option(name, kind, default, meaning, example=example)


OPTIONS: tuple[Option, ...] = (
    BACKENDS,
    c.REDIS_URL.for_command(
        help="Redis of the deployment: instances registered by agents, plans, load records (rediss:// for TLS, "
        "?ssl_cert_reqs=none for a self-signed certificate); none: static backends only, nothing recorded"
    ),
    c.REDIS_PREFIX,
    c.HOST,
    c.PORT,
    API_KEYS,
    API_KEYS_ENV,
    _opt("max_body_bytes", integer(1), 8 * 1024 * 1024, "largest request body; larger gets 413"),
    _opt("connect_timeout_s", number(above=0), 5.0, "upstream connect timeout (s)"),
    _opt("read_timeout_s", number(above=0), 600.0, "longest wait for the next upstream bytes (s)"),
    _opt(
        "write_timeout_s",
        number(above=0),
        30.0,
        "upstream write timeout (s; https:// backends: writes to http:// ones are buffered)",
    ),
    _opt(
        "pool_timeout_s",
        number(above=0),
        10.0,
        "wait for an upstream connection from the pool (s; https:// backends: http:// ones do not wait)",
    ),
    _opt(
        "max_connections",
        integer(1),
        2000,
        "upstream connection pool size (https://; to http:// backends each instance's max_concurrency bounds them)",
    ),
    _opt("max_keepalive_connections", integer(0), 500, "idle upstream connections kept, per backend"),
    _opt("keepalive_expiry_s", number(0.0), 30.0, "how long an idle upstream connection is kept (s)"),
    _opt("health_interval_s", number(above=0), 5.0, "active health probe period (s)"),
    _opt("health_timeout_s", number(above=0), 2.0, "health probe (and model discovery) timeout (s)"),
    _opt("eject_cooldown_s", number(0.0), 10.0, "how long an ejected instance is skipped (s)"),
    _opt("eject_after_failures", integer(1), 3, "consecutive 5xx before an instance is ejected"),
    _opt("retry_after_s", integer(0), 1, "Retry-After (s) of a 503"),
    _opt(
        "request_usage_in_stream",
        boolean(),
        True,
        "ask engines for include_usage in streams (turn off for an engine that rejects it)",
    ),
    _opt("record_buffer", integer(1), 10_000, "observations buffered while Redis is slow or down"),
    _opt("flush_interval_s", number(above=0), 0.25, "period of the Redis record flush (s)"),
    _opt("registry_refresh_s", number(above=0), 5.0, "full re-read of the instance registry and plan (s)"),
    _opt("redis_timeout_s", number(above=0), 1.0, "Redis command timeout (s)"),
    c.CLASS_EDGES,
    _opt(
        "classifier",
        choice("model", "max_tokens"),
        "model",
        "output-length prediction: model (the shipped trained classifier) or max_tokens (max_tokens only)",
    ),
    _opt(
        "classifier_poll_s",
        number(above=0),
        10.0,
        "period of the look for a retrained classifier in Redis (s; with redis_url)",
    ),
    c.LOG_LEVEL,
    _opt("access_log", boolean(), False, "log every request (uvicorn access log)"),
)
