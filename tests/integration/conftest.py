"""Integration fixtures: a real llama.cpp llama-server with SmolLM2-135M-Instruct, built once and cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.llama import LlamaServer, ensure_built, run_llama_server


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """llama-server on a free loopback port; the first use builds it (minutes) unless scripts/check already did."""
    binary, model = ensure_built()
    with run_llama_server(binary, model) as server:
        yield server
