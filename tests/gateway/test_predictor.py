"""The predictor seam: a plugged-in predictor decides the pool, and it can be swapped while the gateway runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread
from wattgate.classifier.api import Prediction
from wattgate.gateway.app import create_app
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.gateway.state import GatewayState

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


class Fixed:
    def __init__(self, input_tokens: int, probs: tuple[float, float, float]) -> None:
        self.input_tokens, self.probs = input_tokens, probs

    def predict(self, body: Mapping[str, Any], endpoint: str) -> Prediction:
        return Prediction(self.input_tokens, self.probs, {"n_messages": 1.0}, method="fixed")


class Broken:
    def predict(self, body: Mapping[str, Any], endpoint: str) -> Prediction:
        raise RuntimeError("model file is corrupt")


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[GatewayState]]]:
    seen: list[GatewayState] = []

    async def watcher(state: GatewayState) -> None:  # what a classifier watcher gets
        seen.append(state)
        await asyncio.Event().wait()

    with UvicornThread(FakeBackend()) as backend:
        spec = BackendSpec(url=backend.url, id="b0", models=("fake-model",))
        app = create_app(
            GatewaySettings(backends=(spec,)), predictor=Fixed(2000, (0.0, 0.0, 1.0)), background=[watcher]
        )
        with UvicornThread(app) as gw:
            yield gw.url, seen


def test_plugged_predictor_decides_the_pool_and_can_be_swapped(
    gateway: tuple[str, list[GatewayState]], caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = gateway
    assert httpx.post(url + "/v1/chat/completions", json=BODY).headers["x-wattgate-pool"] == "LL"
    (state,) = seen
    assert state.predictor.version == "initial"
    with caplog.at_level("INFO", logger="wattgate.gateway"):
        state.predictor.swap(Fixed(10, (1.0, 0.0, 0.0)), version="v2")
        state.predictor.swap(state.predictor.current)  # no version given: the one in use is kept
    assert state.predictor.version == "v2"
    assert [r.getMessage() for r in caplog.records] == ["classifier predictor swapped (version v2)"] * 2
    assert httpx.post(url + "/v1/chat/completions", json=BODY).headers["x-wattgate-pool"] == "SS"
    state.predictor.swap(Broken(), version="v3")
    resp = httpx.post(url + "/v1/chat/completions", json={**BODY, "max_tokens": 20})
    assert resp.status_code == 200  # the max_tokens fallback took over
    assert resp.headers["x-wattgate-pool"] == "SS"
