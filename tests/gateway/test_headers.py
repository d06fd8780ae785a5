"""What reaches the backend, header by header (every value, repeats and order kept by the fake): the client's
credentials never, the backend's own key once, hop-by-hop headers never; client keys in either header and
from the environment; the body untouched when ``request_usage_in_stream`` is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

from tests.gateway.conftest import Servers
from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread, wait_port
from wattgate.embedded_redis import free_port
from wattgate.gateway.settings import BackendSpec

MSG = [{"role": "user", "content": "hi"}]
BODY = {"model": "fake-model", "messages": MSG}
CLIENT_CREDENTIALS = [
    ("Authorization", "Bearer client-secret"),
    ("Authorization", "Bearer client-second"),
    ("api-key", "client-secret"),
    ("x-api-key", "client-secret"),
]


def post(gw: str, headers: list[tuple[str, str]], body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.post(gw + "/v1/chat/completions", json=body or BODY, headers=headers)


def test_backend_with_a_key_gets_exactly_its_own_key_never_the_clients(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([BackendSpec(url=url, id="b0", models=("fake-model",), api_key="backend-secret")])
    assert post(gw, CLIENT_CREDENTIALS).status_code == 200
    sent = fake.headers[-1]
    # one Authorization, the backend's: not the client's next to it (a dict of headers would hide that)
    assert sent.all("authorization") == ["Bearer backend-secret"]
    assert sent.all("api-key") == [] and sent.all("x-api-key") == []
    assert not any("client-" in v for _, v in sent)


def test_backend_without_a_key_gets_no_credentials_at_all(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url])
    assert post(gw, [*CLIENT_CREDENTIALS, ("Cookie", "session=1")]).status_code == 200
    sent = fake.headers[-1]
    for name in ("authorization", "api-key", "x-api-key", "cookie"):
        assert sent.all(name) == [], name


def test_other_headers_pass_with_every_value_in_order_and_hop_by_hop_ones_do_not(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], forward_headers=("x-trace", "x-hop-a", "x-hop-b"))  # allowed, then named hop
    headers = [
        ("x-trace", "first"),
        ("x-trace", "second"),
        ("Connection", "x-hop-a"),
        ("Connection", "x-hop-b"),  # a second Connection header names hop-by-hop headers too
        ("x-hop-a", "1"),
        ("x-hop-b", "1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Accept-Encoding", "gzip"),
    ]
    resp = post(gw, headers)
    assert resp.status_code == 200
    sent = fake.headers[-1]
    assert sent.all("x-trace") == ["first", "second"]
    for name in ("connection", "x-hop-a", "x-hop-b", "forwarded", "x-forwarded-for"):
        assert sent.all(name) == [], name
    assert sent.all("accept-encoding") == ["identity"]  # the proxy reads SSE bytes: never compressed
    assert sent.one("x-request-id") == resp.headers["x-request-id"]


def test_client_keys_accepted_in_either_header_and_checked(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], api_keys=frozenset({"k1", "k2"}))
    assert post(gw, [("api-key", "k2")]).status_code == 200
    assert post(gw, [("Authorization", "Bearer k1")]).status_code == 200
    assert post(gw, [("Authorization", "bearer  k1")]).status_code == 200  # scheme case, extra space
    for bad in ([("api-key", "k3")], [("Authorization", "Bearer k3")], [("Authorization", "Basic k1")], []):
        resp = post(gw, bad)
        assert resp.status_code == 401, bad
        assert resp.json()["error"]["code"] == "invalid_api_key"
    assert len(fake.received) == 3


def test_usage_option_off_sends_the_clients_body_untouched(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], request_usage_in_stream=False)
    raw = json.dumps({**BODY, "stream": True}).encode()
    with httpx.stream(
        "POST", gw + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    ) as resp:
        text = resp.read().decode()
    assert resp.status_code == 200 and text.endswith("data: [DONE]\n\n")
    assert fake.raw_bodies[-1] == raw  # byte for byte: no stream_options spliced in
    assert '"usage"' not in text


def test_usage_option_on_asks_the_engine_and_strips_the_usage_chunk(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url])
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as resp:
        text = resp.read().decode()
    assert fake.received[-1]["stream_options"] == {"include_usage": True}
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")


@pytest.mark.slow
def test_keys_from_the_environment_and_the_backends_key_from_its_env_variable(tmp_path: object) -> None:
    """``WATTGATE_API_KEYS=k1,k2`` and ``--api-keys-env VAR`` add client keys; ``api_key_env`` gives a backend its
    key, read from the gateway's environment: all through ``wattgate gateway`` as a user starts it."""
    fake = FakeBackend()
    with UvicornThread(fake) as backend:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.getcwd(),
            "WATTGATE_API_KEYS": "k1,k2",
            "MORE_CLIENT_KEYS": "k3",
            "BACKEND_KEY": "from-env",
        }
        cmd = [sys.executable, "-m", "wattgate", "gateway", "--port", str(port), "--log-level", "warning"]
        cmd += ["--backend", f"{backend.url}#model=fake-model,api_key_env=BACKEND_KEY"]
        cmd += ["--api-keys-env", "MORE_CLIENT_KEYS", "--classifier", "max_tokens"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_port(port, timeout_s=30)
            base = f"http://127.0.0.1:{port}/v1"
            for key in ("k1", "k2", "k3"):
                out = openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(
                    model="fake-model",
                    messages=MSG,  # type: ignore[arg-type]
                )
                assert out.choices[0].message.content
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base, api_key="k4", max_retries=0).models.list()
        finally:
            proc.terminate()
            proc.communicate(timeout=20)
    assert [h.all("authorization") for h in fake.headers] == [["Bearer from-env"]] * 3
