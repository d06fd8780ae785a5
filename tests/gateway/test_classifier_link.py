"""The gateway routes with the trained classifier and swaps in a retrained version published in Redis."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread
from wattgate.classifier.api import MaxTokensPredictor
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.store import ClassifierStore
from wattgate.classifier.train import with_head
from wattgate.gateway.app import create_app
from wattgate.gateway.classifier_link import build_predictor, classifier_watcher
from wattgate.gateway.errors import ConfigError
from wattgate.gateway.settings import BackendSpec, GatewaySettings


def test_build_predictor_follows_the_setting() -> None:
    assert isinstance(build_predictor(GatewaySettings(classifier="max_tokens")), MaxTokensPredictor)
    assert isinstance(build_predictor(GatewaySettings()), ModelPredictor)
    with pytest.raises(ConfigError, match="classifier must be"):
        GatewaySettings(classifier="bert")


def test_gateway_swaps_in_a_published_model_without_restart(redis_url: str) -> None:
    with UvicornThread(FakeBackend()) as backend:
        settings = GatewaySettings(
            backends=(BackendSpec(url=backend.url, id="b0", models=("fake-model",)),),
            redis_url=redis_url,
            classifier_poll_s=0.05,
        )
        app = create_app(settings, predictor=build_predictor(settings), background=[classifier_watcher(settings)])
        with UvicornThread(app) as gw:
            state = app.state.gateway
            assert state.predictor.current.method == "model:v1"
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
            model = load_shipped_model()
            ClassifierStore(redis_url).publish(with_head(model, model.doc["head"], 2, {"why": "test"}))
            deadline = time.monotonic() + 10
            while state.predictor.current.method != "model:v2":
                assert time.monotonic() < deadline, "the gateway never picked up version 2"
                time.sleep(0.02)
            assert state.predictor.version == "2"
            assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
