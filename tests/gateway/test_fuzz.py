"""Hypothesis fuzz over the gateway's endpoints: never a 500, always an OpenAI error body, and it keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread
from wattgate.gateway.app import create_app
from wattgate.gateway.frontdoor import server_options
from wattgate.gateway.settings import BackendSpec, GatewaySettings

PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/health",
    "/ready",
    "/metrics",
    "/v1/x",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "x"]),
                "content": st.one_of(st.text(max_size=50), anything),
            }
        ),
        max_size=3,
    )
    | anything
)
request_docs = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["fake-model", "other"]) | anything,
        "messages": messages,
        "prompt": st.text(max_size=50) | anything,
        "input": st.text(max_size=20) | anything,
        "stream": st.booleans() | anything,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}) | anything,
        "max_tokens": st.integers(-5, 10**9) | anything,
        "n": st.integers(-2, 3),
        "temperature": anything,
        "extra": anything,
    },
)
deep = st.tuples(st.integers(100, 3000), st.sampled_from([b"[", b'{"a":'])).map(
    lambda t: b'{"model": "fake-model", "messages": ' + t[1] * t[0]
)  # nesting Python's parser cannot take (left unclosed: the gateway must judge the depth before parsing)
bodies = st.one_of(
    request_docs.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    anything.map(lambda d: json.dumps(d).encode()),
    deep,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain", ""]),
        "x-request-id": header_text,
        "authorization": header_text,
        "connection": st.sampled_from(["close", "keep-alive", "x-foo"]),
        "x-foo": header_text,
    },
)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    fake = FakeBackend(record=False)
    with UvicornThread(fake) as backend:
        spec = BackendSpec(url=backend.url, id="b0", models=("fake-model",))
        app = create_app(GatewaySettings(backends=(spec,), max_body_bytes=16384))
        with UvicornThread(app, **server_options(app.front_door)) as gw:
            yield gw.url


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), method=st.sampled_from(["POST", "GET", "PUT"]), body=bodies, hdrs=headers)
def test_fuzz_never_500_and_always_openai_errors(
    gateway: str, path: str, method: str, body: bytes, hdrs: dict[str, Any]
) -> None:
    resp = httpx.request(method, gateway + path, content=body, headers=hdrs, timeout=10)
    # the backend is healthy and fast and has room: a 5xx here would be the gateway's own fault
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    assert resp.headers.get("x-request-id")


def test_still_serving_after_the_fuzz(gateway: str) -> None:
    assert httpx.get(gateway + "/health").status_code == 200
    resp = httpx.post(
        gateway + "/v1/chat/completions", json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status_code == 200


def test_odd_content_shapes_do_not_break_the_predictor(gateway: str) -> None:
    odd = {"model": "fake-model", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}, 3]}]}
    assert httpx.post(gateway + "/v1/chat/completions", json=odd).status_code == 200
