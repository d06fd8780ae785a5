"""The gateway's options (``wattgate gateway``): one line each; ``settings.from_values`` builds ``GatewaySettings``.

To add one: a field in ``GatewaySettings`` and an ``Option`` of the same name and default here (the test
``tests/test_settings_model.py`` checks that they agree); the flag, ``WATTGATE_<NAME>``, the YAML key,
``--help`` and the README table follow. Only the settings model is imported here, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from wattgate.carbon import constant
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
    "environment variable holding more comma-separated client keys (an unset or empty one is an error)",
    default_text="none",
    example="MY_KEYS",
)
ADMIN_API_KEYS = dataclasses.replace(
    API_KEYS,
    name="admin_api_keys",
    help="keys for /metrics and the dashboard; none: the client keys",
    flag="--admin-api-key",
)
ADMIN_API_KEYS_ENV = dataclasses.replace(
    API_KEYS_ENV,
    name="admin_api_keys_env",
    help="environment variable holding more comma-separated admin keys (an unset or empty one is an error)",
    example="MY_ADMIN_KEYS",
)


def _class_deadlines(raw: Any) -> str:
    """``SS=10/60,LL=/1800`` or a YAML mapping, checked, as text (``from_values`` fills empty sides with
    ``first_byte_timeout_s`` / ``request_timeout_s``)."""
    from wattgate.gateway.errors import ConfigError  # noqa: PLC0415
    from wattgate.gateway.settings import parse_class_deadlines  # noqa: PLC0415

    if not isinstance(raw, (str, dict)):
        raise ValueError("expected TYPE=FIRST_BYTE_S/TOTAL_S,... or a mapping")
    try:
        parse_class_deadlines(raw, 1.0, 1.0)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("class_deadlines: ")) from None
    if isinstance(raw, str):
        return raw.strip()
    parts = []
    for name, times in raw.items():
        first, total = times.get("first_byte_s", ""), times.get("total_s", "")
        parts.append(f"{str(name).upper()}={first}/{total}")
    return ",".join(parts)


def _header_name(value: str) -> None:
    if not value.isascii() or any(ch in value for ch in " :\t\r\n"):
        raise ValueError(f"{value!r} is not a header name")


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
    _opt("max_json_depth", integer(1), 128, "deepest nesting of a request body; deeper gets 400"),
    # the client side (the front door)
    _opt("client_header_timeout_s", number(above=0), 60.0, "a request head must arrive within this (s; 408)"),
    _opt("client_body_timeout_s", number(above=0), 60.0, "longest wait between two request body reads (s; 408)"),
    _opt("client_keepalive_timeout_s", number(0.0), 5.0, "idle keep-alive client connection (s)"),
    _opt("max_header_bytes", integer(1), 60 * 1024, "request line + headers; larger gets 431"),
    _opt(
        "max_client_connections",
        integer(0),
        0,
        "open client connections; 0: (open-file limit - 64) / 2, since a request may need an upstream socket too",
    ),
    _opt("connect_timeout_s", number(above=0), 5.0, "upstream connect timeout (s)"),
    _opt(
        "read_timeout_s", number(above=0), 60.0, "longest wait for the next upstream bytes once an answer has begun (s)"
    ),
    _opt("first_byte_timeout_s", number(above=0), 60.0, "a stream's first event, from the request's arrival (s)"),
    _opt("request_timeout_s", number(above=0), 300.0, "a whole request, retries included (s)"),
    Option(
        "class_deadlines",
        custom("TYPE=FIRST_BYTE_S/TOTAL_S,... (YAML: a mapping)", _class_deadlines, metavar="TYPE=FB/TOTAL,..."),
        "",
        "per request type: SS=10/60,LL=/1800 (first byte / total s; an empty side keeps first_byte_timeout_s / "
        "request_timeout_s), or in YAML {SS: {first_byte_s: 10, total_s: 60}}",
        default_text="none",
        example="SS=10/60,LL=/1800",
    ),
    _opt("max_response_bytes", integer(1), 64 * 1024 * 1024, "largest non-streamed answer buffered; larger gets 502"),
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
    _opt(
        "eject_after_failures",
        integer(1),
        3,
        "consecutive failures that are the instance's (5xx, closed unanswered, timeouts) before it is ejected",
    ),
    _opt(
        "max_ejection_percent",
        number(0.0, 100.0),
        10.0,
        "most of a pool ejected at once (the first ejection is always allowed)",
    ),
    _opt(
        "panic_threshold_percent",
        number(0.0, 100.0),
        50.0,
        "below this share of a pool routable, its other ready instances take what nothing routable can (0: off)",
    ),
    c.ADMISSION_WINDOW_S,
    c.SPILL_ANY,
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
    c.CLASSIFIER_TEXT_SLOTS,
    c.LOG_LEVEL,
    _opt("access_log", boolean(), False, "log every request (uvicorn access log)"),
    Option(
        "forward_headers",
        listof(
            text(nonempty=True, check=_header_name),
            repeat=True,
            label="header name, repeatable (environment and text: comma-separated)",
        ),
        (),
        "request headers passed to backends besides the built-in allow-list (any case)",
        flag="--forward-header",
        default_text="none",
        example="x-tenant",
    ),
    ADMIN_API_KEYS,
    ADMIN_API_KEYS_ENV,
    _opt("protect_metrics", boolean(), False, "/metrics needs a key (needs api_keys or admin_api_keys)"),
    _opt("protect_dashboard", boolean(), True, "the dashboard needs a key when any key is configured"),
    Option(
        "energy_key_names",
        listof(
            text(nonempty=True),
            repeat=True,
            label="key-<12 hex>=NAME, repeatable (environment and text: comma-separated)",
        ),
        (),
        "names for API keys in the energy metrics and report (see Energy per request; other keys are labelled "
        "key-<12 hex of their SHA-256>; names are lower-cased)",
        flag="--energy-key-name",
        default_text="none",
        example="key-0123456789ab=team-a",
    ),
    Option(
        "energy_carbon_g_per_kwh",
        c.carbon_kind(),
        constant(475.0),
        "carbon intensity of the energy attributed (gCO2e per kWh): a number, or a file of hourly values cycled "
        "from Monday 00:00 UTC (24 values: the UTC hours of a day); each second at the intensity of its hour",
        example="300",
    ),
    _opt(
        "energy_prefill_weight",
        number(0.0),
        0.1,
        "a prompt token's work against an output token's when an interval's energy is split among requests",
    ),
    _opt(
        "energy_max_open_s",
        number(above=0),
        600.0,
        "longest a running request holds its instance's energy intervals open before they settle (s)",
    ),
    _opt("energy_interval_s", number(above=0), 1.0, "period of the read of the agents' energy counters (s)"),
)
