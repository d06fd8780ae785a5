"""The LiteLLM proxy leg of bench/: the real LiteLLM proxy relays a plain and a streamed completion to a fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.litellm_leg import (
    LiteLLMProxyUnavailable,
    fake_backend_app,
    litellm_installed,
    litellm_proxy,
    proxy_config,
)
from tests.support import UvicornThread

MODEL = "fake-model"
installed = pytest.mark.skipif(
    not litellm_installed(),
    reason="LiteLLM proxy not installed: run scripts/install_litellm_proxy (bench only, not part of ./dev test)",
)


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    with UvicornThread(fake_backend_app(chunks=6)) as backend, litellm_proxy(backend.url, MODEL) as url:
        yield url


@installed
@pytest.mark.slow
def test_plain_and_streamed_completion_go_through_litellm(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0, timeout=30)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5"

    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 6
    assert "".join(pieces) == "tok0 tok1 tok2 tok3 tok4 tok5 "


def test_missing_proxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WATTGATE_LITELLM_BIN", str(tmp_path / "no-such-litellm"))
    with (
        pytest.raises(LiteLLMProxyUnavailable, match="scripts/install_litellm_proxy"),
        litellm_proxy("http://127.0.0.1:9", MODEL),
    ):
        pass


def test_environment_whose_python_is_gone_counts_as_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "litellm"
    script.write_text(f"#!{tmp_path / 'gone' / 'python'}\nprint('unreachable')\n")
    script.chmod(0o755)
    monkeypatch.setenv("WATTGATE_LITELLM_BIN", str(script))
    assert not litellm_installed()
    with pytest.raises(LiteLLMProxyUnavailable, match="broken"), litellm_proxy("http://127.0.0.1:9", MODEL):
        pass


def test_config_routes_the_model_to_the_backend_v1_api() -> None:
    config = json.loads(proxy_config("http://127.0.0.1:8000", MODEL))
    (entry,) = config["model_list"]
    assert entry["model_name"] == MODEL
    assert entry["litellm_params"]["model"] == f"openai/{MODEL}"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:8000/v1"
    assert json.loads(proxy_config("http://h:1/v1/", MODEL))["model_list"][0]["litellm_params"]["api_base"] == (
        "http://h:1/v1"
    )
