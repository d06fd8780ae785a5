"""A real LLM server nobody here wrote (llama.cpp's llama-server, SmolLM2-135M) streams through the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.llama import LlamaServer, run_gateway
from wattgate.profiles.classes import POOL_NAMES

# The first use of the llama_server fixture may build llama-server (minutes on 2 cores).
pytestmark = [pytest.mark.llama, pytest.mark.slow, pytest.mark.timeout(1800)]

MESSAGES: list[Any] = [{"role": "user", "content": "Name three colours."}]


def stream_chat(client: openai.OpenAI, model: str) -> list[str]:
    """Stream a short chat completion; the content pieces in the order they came."""
    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, temperature=0, stream=True)
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def engine_busy(server: LlamaServer) -> bool:
    """Whether llama-server is generating right now (its /slots monitoring endpoint)."""
    slots = httpx.get(f"{server.url}/slots", timeout=10, trust_env=False).json()
    return any(slot["is_processing"] for slot in slots)


def test_llama_server_streams_a_real_completion(llama_server: LlamaServer) -> None:
    client = openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    pieces = stream_chat(client, llama_server.model)
    assert len(pieces) >= 3
    assert "".join(pieces).strip()


def test_gateway_streams_a_real_completion_from_llama_server(llama_server: LlamaServer, tmp_path: Path) -> None:
    backend = f"{llama_server.url}#model={llama_server.model}"
    with run_gateway(backend, tmp_path / "gateway.log") as gateway:
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=llama_server.model, messages=MESSAGES, max_tokens=24, temperature=0, stream=True
        )
        assert raw.headers["x-wattgate-pool"] in POOL_NAMES
        pieces: list[str] = []
        usage_chunks = 0
        generating_at_first_piece = None
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if generating_at_first_piece is None:
                    generating_at_first_piece = engine_busy(llama_server)
            usage_chunks += chunk.usage is not None and not chunk.choices
    # Causal, not timed: the first piece reached the client while llama-server was still generating.
    assert generating_at_first_piece is True
    assert len(pieces) >= 3, pieces
    assert "".join(pieces).strip()
    assert usage_chunks == 0  # the usage chunk the gateway asked for is stripped: the client did not ask


def test_gateway_passes_llama_server_usage_when_the_client_asks(llama_server: LlamaServer, tmp_path: Path) -> None:
    backend = f"{llama_server.url}#model={llama_server.model}"
    with run_gateway(backend, tmp_path / "gateway.log") as gateway:
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
        chunks = list(
            client.chat.completions.create(
                model=llama_server.model,
                messages=MESSAGES,
                max_tokens=24,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert 1 <= usage.completion_tokens <= 24
    assert usage.prompt_tokens > 0
    assert len(pieces) >= 3
