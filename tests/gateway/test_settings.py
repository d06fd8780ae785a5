"""Settings: backend hints, YAML file, environment and flags merged once, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattgate.gateway.errors import ConfigError
from wattgate.gateway.settings import Deadline, GatewaySettings, load_settings, parse_backend


def test_backend_hints() -> None:
    b = parse_backend("http://10.0.0.5:8000/v1#model=llama-70b,pool=sm,max_concurrency=64,id=gpu0", 0)
    assert (b.url, b.models, b.pool, b.max_concurrency, b.id) == (
        "http://10.0.0.5:8000",
        ("llama-70b",),
        "SM",
        64,
        "gpu0",
    )
    plain = parse_backend("http://h:1", 2)
    assert (plain.models, plain.pool, plain.id) == ((), None, "static-3")


def test_backend_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_KEY", "k1")
    assert parse_backend("http://h:1#api_key_env=VLLM_KEY").api_key == "k1"
    with pytest.raises(ConfigError, match="NOPE_KEY is not set"):
        parse_backend("http://h:1#api_key_env=NOPE_KEY")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://h:1", "url must be http"),
        ("http://h:1#pool=XX", "pool must be one of"),
        ("http://h:1#colour=red", "unknown option"),
        ("http://h:1#model", "not key=value"),
        ("http://h:1#max_concurrency=0", "max_concurrency must be > 0"),
    ],
)
def test_bad_backends_say_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_backend(text)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "port: 9000\nread_timeout_s: 30\napi_keys: [a, b]\nclass_edges: {input_short_max: 100, input_medium_max: 200,"
        " output_short_max: 10, output_medium_max: 20}\n"
        "backends:\n  - {url: 'http://h:1', model: m, pool: SS}\n"
    )
    s = load_settings(
        cfg,
        env={"WATTGATE_PORT": "9100", "WATTGATE_REDIS_URL": "redis://r:6379/0"},
        overrides={"port": 9200},
        backend_args=("http://h:2#model=m",),
    )
    assert s.port == 9200
    assert s.redis_url == "redis://r:6379/0"
    assert s.read_timeout_s == 30.0
    assert s.api_keys == frozenset({"a", "b"})
    assert s.edges.input_short_max == 100
    assert [b.url for b in s.backends] == ["http://h:2"]  # flags replace the file's list, as for every option
    assert [b.id for b in s.backends] == ["static-1"]
    from_file = load_settings(cfg, env={"WATTGATE_PORT": "9100"})
    assert from_file.port == 9100
    assert [(b.url, b.pool) for b in from_file.backends] == [("http://h:1", "SS")]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("portt: 1\n", "unknown option 'portt'; did you mean port?"),
        ("port: abc\n", "port: expected an integer, got 'abc'"),
        ("port: 70000\n", "port: must be <= 65535"),
        ("read_timeout_s: 0\n", "read_timeout_s: must be > 0"),
        ("redis_url: http://x\n", "redis_url: must start with"),
        ("class_edges: {input_short_max: 500, input_medium_max: 100}\n", "class_edges"),
        ("- a\n- b\n", "must be a mapping"),
        ("port: [\n", "not valid YAML"),
        ("access_log: maybe\n", "access_log: expected true or false"),
        ("backends: [{url: 'http://h:1', id: x}, {url: 'http://h:2', id: x}]\n", "unique"),
    ],
)
def test_bad_files_say_why(tmp_path: Path, doc: str, message: str) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(doc)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings("/nonexistent/gw.yaml", env={})


def test_redis_password_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        GatewaySettings(redis_url="http://:hunter2@r:1")
    assert "hunter2" not in str(info.value)


def test_front_door_options_from_file_environment_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "client_header_timeout_s: 10\nmax_header_bytes: 8192\nforward_headers: [X-Tenant]\n"
        "class_deadlines: {ss: {first_byte_s: 5, total_s: 20}, LL: {total_s: 1800}}\n"
    )
    s = load_settings(
        cfg,
        env={"WATTGATE_MAX_CLIENT_CONNECTIONS": "500", "WATTGATE_ADMIN_API_KEYS": "ops1,ops2"},
        overrides={"protect_metrics": True, "first_byte_timeout_s": 30.0},
    )
    assert (s.client_header_timeout_s, s.max_header_bytes, s.max_client_connections) == (10.0, 8192, 500)
    assert s.forward_headers == ("x-tenant",)
    assert s.admin_api_keys == frozenset({"ops1", "ops2"}) and s.protect_metrics
    assert s.deadline("SS") == Deadline(5.0, 20.0)
    assert s.deadline("LL") == Deadline(30.0, 1800.0)  # the flag's first-byte default fills the gap
    assert s.deadline("SM") == Deadline(30.0, 300.0)
    assert s.deadline(None) == Deadline(30.0, 300.0)
    flat = load_settings(None, env={"WATTGATE_CLASS_DEADLINES": "SS=5/20,LL=/1800", "WATTGATE_FORWARD_HEADERS": "a,b"})
    assert flat.class_deadlines == (("LL", Deadline(60.0, 1800.0)), ("SS", Deadline(5.0, 20.0)))
    assert flat.forward_headers == ("a", "b")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"class_deadlines": "XX=1/2"}, "--class-deadlines: unknown request type 'XX'"),
        ({"class_deadlines": "SS"}, "TYPE=FIRST_BYTE_S/TOTAL_S"),
        ({"class_deadlines": "SS=0/2"}, "must be > 0"),
        ({"class_deadlines": {"SS": {"ttft": 1}}}, "expected {first_byte_s"),
        ({"protect_metrics": True}, "protect_metrics needs api_keys"),
        ({"max_ejection_percent": 120}, "--max-ejection-percent: must be <= 100"),
        ({"client_header_timeout_s": 0}, "--client-header-timeout-s: must be > 0"),
        ({"forward_headers": "bad name"}, "not a header name"),
    ],
)
def test_bad_front_door_options_say_why(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env={}, overrides=raw)
