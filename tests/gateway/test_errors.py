"""Bad input gets OpenAI-format errors with the right status and parameter; keys and headers are handled safely."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import Servers
from tests.gateway.fake_backend import FakeBackend
from wattgate.gateway.settings import BackendSpec
from wattgate.gateway.state import GatewayState

MSG = [{"role": "user", "content": "hi"}]


def err(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "fake-model"}', "messages"),
        (b'{"model": "fake-model", "messages": []}', "messages"),
        (b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}], "stream": "yes"}', "stream"),
        (b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}], "max_tokens": -1}', "max_tokens"),
        (
            b'{"model": "fake-model", "messages": [{"role":"user","content":"x"}], "stream_options": 3}',
            "stream_options",
        ),
    ],
)
def test_400_names_the_parameter(one: tuple[str, FakeBackend, GatewayState], body: bytes, param: str | None) -> None:
    gw, fake, _ = one
    resp = httpx.post(gw + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    e = err(resp)
    assert e["param"] == param
    assert e["type"] == "invalid_request_error"
    assert fake.received == []


def test_unknown_model_is_404(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one
    c = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


def test_body_over_limit_is_413(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], max_body_bytes=1000)
    big = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 2000}]}
    resp = httpx.post(gw + "/v1/chat/completions", json=big)
    assert resp.status_code == 413
    assert err(resp)["code"] == "request_too_large"
    # chunked upload without content-length is cut off at the limit too
    resp = httpx.post(gw + "/v1/chat/completions", content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]))
    assert resp.status_code == 413
    assert fake.received == []


def test_api_keys_401_and_the_client_key_is_never_forwarded(servers: Servers) -> None:
    fake, url = servers.backend()
    backend = BackendSpec(url=url, id="b0", models=("fake-model",), api_key="backend-secret")
    gw, _ = servers.gateway([backend], api_keys=frozenset({"client-secret"}))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="fake-model",
            messages=MSG,  # type: ignore[arg-type]
        )
    resp = httpx.post(gw + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG})
    assert resp.status_code == 401
    assert err(resp)["code"] == "invalid_api_key"
    assert httpx.get(gw + "/v1/models").status_code == 401
    good = openai.OpenAI(base_url=gw + "/v1", api_key="client-secret", max_retries=0)
    good.chat.completions.create(
        model="fake-model",
        messages=MSG,  # type: ignore[arg-type]
        extra_headers={
            "Connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "Proxy-Authorization": "p",
            "Cookie": "c=1",
        },
    )
    sent = fake.headers[-1]
    assert sent.all("authorization") == ["Bearer backend-secret"]
    assert "client-secret" not in str(sent)
    for hop in ("x-secret-hop", "proxy-authorization", "cookie", "connection"):
        assert sent.all(hop) == []
    assert httpx.get(gw + "/health").status_code == 200  # health needs no key


def test_request_id_is_passed_on_or_generated(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, _ = one
    resp = httpx.post(
        gw + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG}, headers={"x-request-id": "abc-123"}
    )
    assert resp.headers["x-request-id"] == "abc-123"
    assert fake.headers[-1].one("x-request-id") == "abc-123"
    resp = httpx.post(gw + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG})
    rid = resp.headers["x-request-id"]
    assert len(rid) == 32
    assert fake.headers[-1].one("x-request-id") == rid
    assert httpx.post(gw + "/v1/chat/completions", content=b"{").headers["x-request-id"]


def test_unknown_path_and_method_get_openai_errors(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one
    resp = httpx.get(gw + "/v1/nothing")
    assert resp.status_code == 404
    assert err(resp)["type"] == "not_found_error"
    resp = httpx.get(gw + "/v1/chat/completions")
    assert resp.status_code == 405
    err(resp)


def test_backend_4xx_is_passed_through_and_never_ejects(servers: Servers) -> None:
    fake, url = servers.backend(status=400)
    gw, state = servers.gateway([url], eject_after_failures=1)
    for _ in range(5):
        resp = httpx.post(gw + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG})
        assert resp.status_code == 400
        assert err(resp)["message"] == "fake failure"
    assert state.instances["b0"].ejected_until == 0.0
    assert len(fake.received) == 5


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"model": "fake-model"}, "input"),
        ("/v1/embeddings", {"model": "fake-model", "input": 3}, "input"),
        ("/v1/completions", {"model": "fake-model"}, "prompt"),
        ("/v1/completions", {"model": "fake-model", "prompt": {"a": 1}}, "prompt"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "n": 0}, "n"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": ["x"]}, "messages"),
    ],
)
def test_each_endpoint_checks_its_own_fields(
    one: tuple[str, FakeBackend, GatewayState], path: str, body: dict[str, object], param: str
) -> None:
    gw, fake, _ = one
    resp = httpx.post(gw + path, json=body)
    assert resp.status_code == 400 and err(resp)["param"] == param
    assert fake.received == []


def test_the_smallest_valid_values_pass(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, _ = one
    for path, body in (
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "max_tokens": 1, "n": 1}),
        ("/v1/completions", {"model": "fake-model", "prompt": ["a", "b"], "max_completion_tokens": 1}),
        ("/v1/embeddings", {"model": "fake-model", "input": "x"}),
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "stream": None}),
    ):
        assert httpx.post(gw + path, json=body).status_code == 200, (path, body)
    assert len(fake.received) == 4


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "fake-model", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"model": "fake-model", "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b"[" * 100_000,
    ],
    ids=["array-1000", "object-5000", "unclosed-100000"],
)
def test_deeply_nested_json_is_a_400_naming_the_problem(
    one: tuple[str, FakeBackend, GatewayState], body: bytes
) -> None:
    gw, fake, _ = one
    resp = httpx.post(gw + "/v1/chat/completions", content=body)
    assert resp.status_code == 400
    assert err(resp)["message"] == "request body is nested deeper than 128 levels"
    assert (
        'wattgate_gateway_requests_total{endpoint="chat",pool="-",status="400"} 1.0' in httpx.get(gw + "/metrics").text
    )
    nested_in_a_string = {"model": "fake-model", "messages": [{"role": "user", "content": "[" * 1000}]}
    assert httpx.post(gw + "/v1/chat/completions", json=nested_in_a_string).status_code == 200
    assert len(fake.received) == 1


def test_every_response_is_counted_by_status(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one
    calls = [
        ("GET", "/health", None, 200),
        ("GET", "/ready", None, 200),
        ("GET", "/v1/models", None, 200),
        ("GET", "/nowhere", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b"{", 400),
        ("POST", "/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user"}]}', 404),
        ("POST", "/v1/completions", b'{"model": "fake-model", "prompt": "x"}', 200),
        ("GET", "/dashboard/nothing.js", None, 404),
    ]
    for method, path, body, status in calls:
        assert httpx.request(method, gw + path, content=body).status_code == status, path
    samples = [
        line
        for line in httpx.get(gw + "/metrics").text.splitlines()
        if line.startswith("wattgate_gateway_requests_total")
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) == len(calls)
    for endpoint, status in (("health", 200), ("other", 404), ("chat", 405), ("dashboard", 404)):
        assert f'{{endpoint="{endpoint}",pool="",status="{status}"}} 1.0' in "\n".join(samples)


def test_only_allowed_request_headers_reach_the_backend(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], forward_headers=("x-tenant",))
    sent = {
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Prefix": "/p",
        "X-Forwarded-Host": "evil",
        "Forwarded": "for=1.2.3.4",
        "X-Real-IP": "1.2.3.4",
        "X-Original-URL": "/admin",
        "X-Envoy-Original-Path": "/admin",
        "X-Rewrite-URL": "/admin",
        "Cookie": "c=1",
        "X-Unknown": "1",
        "Content-Type": "text/plain",
        "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "User-Agent": "my-client/1.0",
        "X-Tenant": "acme",
        "OpenAI-Organization": "org-1",
    }
    resp = httpx.post(gw + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG}, headers=sent)
    assert resp.status_code == 200
    got = fake.headers[-1]
    for name in ("traceparent", "user-agent", "x-tenant", "openai-organization"):
        assert got.one(name) == sent[{k.lower(): k for k in sent}[name]]
    assert got.all("content-type") == ["application/json"]  # the gateway's own: the body is the JSON it read
    names = {k for k, _ in got}
    leaked = {k for k in names if k.startswith(("x-forwarded", "x-real", "x-original", "x-envoy", "x-rewrite"))}
    assert leaked == set()
    assert "forwarded" not in names and "cookie" not in names and "x-unknown" not in names


def test_metrics_and_dashboard_can_be_protected(servers: Servers) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([url], api_keys=frozenset({"client-key"}))
    assert httpx.get(gw + "/metrics").status_code == 200  # open by default, as Prometheus expects
    resp = httpx.get(gw + "/dashboard")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Basic realm="wattgate dashboard"'  # a browser asks for the key
    assert httpx.get(gw + "/dashboard/data").status_code == 401
    assert httpx.get(gw + "/dashboard", auth=("any", "client-key")).status_code == 200
    assert httpx.get(gw + "/dashboard/data", headers={"authorization": "Bearer client-key"}).status_code == 200
    assert httpx.get(gw + "/ready").json() == {"status": "ready"}  # no model list without a key
    assert httpx.get(gw + "/ready", headers={"authorization": "Bearer client-key"}).json()["models"] == ["fake-model"]

    gw2, _ = servers.gateway(
        [url], api_keys=frozenset({"client-key"}), admin_api_keys=frozenset({"ops"}), protect_metrics=True
    )
    assert httpx.get(gw2 + "/metrics").status_code == 401
    assert httpx.get(gw2 + "/metrics", headers={"authorization": "Bearer client-key"}).status_code == 401
    assert httpx.get(gw2 + "/metrics", headers={"authorization": "Bearer ops"}).status_code == 200
    assert httpx.get(gw2 + "/dashboard", auth=("", "ops")).status_code == 200
