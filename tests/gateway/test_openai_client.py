"""The official openai client (sync and async, streaming and not) through the gateway to a fake backend."""

from __future__ import annotations

import asyncio

import openai

from tests.gateway.conftest import Servers
from tests.gateway.fake_backend import FakeBackend
from wattgate.gateway.settings import parse_backend
from wattgate.gateway.state import GatewayState

MSG = [{"role": "user", "content": "hello"}]


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_chat_non_streaming_with_headers(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, _ = one
    raw = client(gw).chat.completions.with_raw_response.create(model="fake-model", messages=MSG, max_tokens=3)  # type: ignore[arg-type]
    resp = raw.parse()
    assert resp.choices[0].message.content == "t0 t1 t2"
    assert raw.headers["x-wattgate-pool"] == "SS"
    assert raw.headers["x-wattgate-instance"] == "b0"
    assert raw.headers["x-request-id"]
    assert fake.received[0]["max_tokens"] == 3


def test_chat_streaming_strips_usage_it_asked_for(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, _ = one
    stream = client(gw).chat.completions.create(model="fake-model", messages=MSG, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "t0 t1 t2 "
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert fake.received[0]["stream_options"] == {"include_usage": True}


def test_chat_streaming_keeps_usage_the_client_asked_for(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one
    stream = client(gw).chat.completions.create(
        model="fake-model",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_unknown_fields_pass_through_untouched(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, _ = one
    extra = {"guided_json": {"type": "object"}, "top_k": 7, "x_weird": [1, "a", None]}
    client(gw).chat.completions.create(model="fake-model", messages=MSG, extra_body=extra)  # type: ignore[arg-type]
    for key, value in extra.items():
        assert fake.received[0][key] == value


def test_async_completions_streaming_and_not(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one

    async def go() -> tuple[str, str]:
        ac = openai.AsyncOpenAI(base_url=gw + "/v1", api_key="none", max_retries=0)
        full = await ac.completions.create(model="fake-model", prompt="once upon", max_tokens=2)
        stream = await ac.completions.create(model="fake-model", prompt="once upon", stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        await ac.close()
        return full.choices[0].text, text

    full, streamed = asyncio.run(go())
    assert full == "t0 t1"
    assert streamed == "t0 t1 t2 "


def test_async_chat_concurrent(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, fake, state = one

    async def go() -> list[str]:
        ac = openai.AsyncOpenAI(base_url=gw + "/v1", api_key="none", max_retries=0)
        rs = await asyncio.gather(*(ac.chat.completions.create(model="fake-model", messages=MSG) for _ in range(20)))  # type: ignore[arg-type]
        await ac.close()
        return [r.choices[0].message.content or "" for r in rs]

    assert asyncio.run(go()) == ["t0 t1 t2"] * 20
    assert fake.completed == 20
    assert state.instances["b0"].in_flight == 0
    assert state.instances["b0"].outstanding_tokens == 0


def test_models_and_embeddings(one: tuple[str, FakeBackend, GatewayState]) -> None:
    gw, _, _ = one
    c = client(gw)
    assert [m.id for m in c.models.list()] == ["fake-model"]
    emb = c.embeddings.create(model="fake-model", input="hello")
    assert emb.data[0].embedding == [0.1, 0.2]


def test_models_discovered_from_backend_without_hints(servers: Servers) -> None:
    _fake, url = servers.backend(model="discovered-7b")
    gw, _ = servers.gateway([parse_backend(url)])
    c = client(gw)
    assert [m.id for m in c.models.list()] == ["discovered-7b"]
    out = c.chat.completions.create(model="discovered-7b", messages=MSG)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "t0 t1 t2"
