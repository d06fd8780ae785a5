"""The gateway routes with the trained classifier and swaps in a retrained version published in Redis."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from tests.classifier.shifted import topic_requests
from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread
from wattgate.classifier.api import MaxTokensPredictor
from wattgate.classifier.features import feature_vector
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.retrain import retrain_once
from wattgate.classifier.served import softmax_add
from wattgate.classifier.store import ClassifierStore
from wattgate.classifier.train import with_served
from wattgate.gateway.app import create_app
from wattgate.gateway.classifier_link import build_predictor, classifier_watcher
from wattgate.gateway.errors import ConfigError
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.planner.contract import Keys, Observation


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
            ClassifierStore(redis_url).publish(with_served(model, {}, 2, {"why": "test"}))
            deadline = time.monotonic() + 10
            while state.predictor.current.method != "model:v2":
                assert time.monotonic() < deadline, "the gateway never picked up version 2"
                time.sleep(0.02)
            assert state.predictor.version == "2"
            assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200


def _observations(redis_url: str, n: int) -> list[Observation]:
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 20
        while client.xlen(Keys().observations) < n:
            assert time.monotonic() < deadline, "the gateway did not record every observation"
            time.sleep(0.02)
        docs = [entry[b"json"] for _, entry in client.xrange(Keys().observations)]
    finally:
        client.close()
    assert all(b"Tell me" not in d for d in docs)  # never the prompt's text
    return [Observation.from_json(d) for d in docs]


@pytest.mark.timeout(600)  # retrain fits trees on the training rows (transfer)
def test_the_gateway_learns_a_served_models_habits_through_redis(redis_url: str) -> None:
    """The running loop: the gateway records observations with text slots, retrain publishes a profile for the
    served model, the gateway loads it and predicts that model's lengths per prompt."""
    fake = FakeBackend()
    with UvicornThread(fake) as backend:
        settings = GatewaySettings(
            backends=(BackendSpec(url=backend.url, id="b0", models=("fake-model",)),),
            redis_url=redis_url,
            classifier_poll_s=0.05,
            flush_interval_s=0.05,
        )
        app = create_app(settings, predictor=build_predictor(settings), background=[classifier_watcher(settings)])
        with UvicornThread(app) as gw, httpx.Client(timeout=30) as client:
            requests = topic_requests(240, seed=9)
            for body, tokens in requests:
                fake.knobs.tokens = tokens  # the served model's habit: the topic decides the length
                assert (
                    client.post(gw.url + "/v1/chat/completions", json={**body, "model": "fake-model"}).status_code
                    == 200
                )
            obs = _observations(redis_url, len(requests))
            shipped = ModelPredictor.shipped()
            first = shipped.predict({**requests[0][0], "model": "fake-model"}, "chat")
            assert obs[0].slots() == first.text_slots and obs[0].text_dim == first.text_dim == 1 << 16
            assert [o.output_tokens for o in obs] == [t for _, t in requests]
            report = retrain_once(ClassifierStore(redis_url))
            assert report.published == 2, report.text()
            state = app.state.gateway
            deadline = time.monotonic() + 10
            while state.predictor.current.method != "model:v2":
                assert time.monotonic() < deadline, "the gateway never picked up version 2"
                time.sleep(0.02)
            predict = state.predictor.current.predict
            long_ = predict(
                {"model": "fake-model", "messages": [{"role": "user", "content": "Tell me about rivers."}]}, "chat"
            )
            short = predict(
                {"model": "fake-model", "messages": [{"role": "user", "content": "Tell me about bees."}]}, "chat"
            )
            assert long_.method == "model:v2+fake-model"
            assert long_.output_probs[2] > 0.8 and short.output_probs[0] > 0.6, (long_, short)
            # the document format 4 retrain writes; the profile's own trees, when transfer won, are what it scores
            loaded = state.predictor.current.model
            assert loaded.doc["format_version"] == 4
            profile = loaded.served["fake-model"]
            values = feature_vector(long_.features, loaded.feature_names)
            trees = profile.head if profile.head is not None else loaded.trees
            assert long_.output_probs == softmax_add(trees.raw3(values), profile.residual(long_.text_slots, values))


def test_observations_keep_no_text_slots_when_the_setting_is_off(redis_url: str) -> None:
    with UvicornThread(FakeBackend()) as backend:
        settings = GatewaySettings(
            backends=(BackendSpec(url=backend.url, id="b0", models=("fake-model",)),),
            redis_url=redis_url,
            flush_interval_s=0.05,
            classifier_text_slots=False,
        )
        with UvicornThread(create_app(settings, predictor=build_predictor(settings))) as gw:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "Tell me about rivers."}]}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
            (obs,) = _observations(redis_url, 1)
    assert obs.text_slots == "" and obs.slots() == [] and obs.features["txt_L"] != 0
