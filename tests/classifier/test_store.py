from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import numpy as np
import pytest
import redis

from tests.classifier.shifted import shifted_requests, terse_split
from wattgate.classifier.adapt import batch_probabilities
from wattgate.classifier.api import Prediction
from wattgate.classifier.errors import ModelFormatError
from wattgate.classifier.features import feature_vector
from wattgate.classifier.metrics import score
from wattgate.classifier.model import FORMAT_VERSION
from wattgate.classifier.observe import observation
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.retrain import retrain_once
from wattgate.classifier.served import softmax_add
from wattgate.classifier.store import ClassifierStore, ClassifierWatcher, StoreError, follow_classifier
from wattgate.classifier.train import labels, with_served
from wattgate.cli import main
from wattgate.planner.contract import Keys, Observation
from wattgate.profiles.classes import ClassEdges


def _record(url: str, n: int, keys: Keys) -> None:
    """What gateways do: one Observation per finished request, with the predictor's features."""
    predictor = ModelPredictor.shipped()
    client = redis.Redis.from_url(url)
    for i, (body, tokens) in enumerate(shifted_requests(n)):
        pred = predictor.predict(body, "chat")
        obs = observation(
            pred,
            keep_text_slots=True,
            request_id=f"r{i}",
            pool="SM",
            predicted_type="SM",
            input_tokens=pred.input_tokens,
            output_tokens=tokens,
            ttft_s=0.1,
            tbt_s=0.02,
            status=200,
            instance="i0",
            model="m",
            ts=1000.0 + i,
        )
        client.xadd(keys.observations, {"json": obs.to_json()})
    client.xadd(keys.observations, {"json": "not json"})
    client.close()


def _feature_observations(rows: list[tuple[dict[str, float], int]], model: str) -> list[Observation]:
    """What a gateway records for requests with these features and answers (no text slots: feature rows)."""
    return [
        observation(
            Prediction(0, (0.3, 0.4, 0.3), features, "model:v1"),
            keep_text_slots=True,
            request_id=f"r{i}",
            pool="SM",
            predicted_type="SM",
            input_tokens=0,
            output_tokens=tokens,
            ttft_s=None,
            tbt_s=None,
            status=200,
            instance="i0",
            model=model,
            ts=1000.0 + i,
        )
        for i, (features, tokens) in enumerate(rows)
    ]


def test_watcher_sees_nothing_until_a_version_is_published(redis_url: str) -> None:
    watcher = ClassifierWatcher(redis_url)
    assert watcher.poll(1) is None
    model = load_shipped_model()
    newer = with_served(model, {}, model.version + 1, {"why": "test"})
    assert ClassifierStore(redis_url).publish(newer) == model.version + 1
    got = watcher.poll(model.version)
    assert got is not None and got[0] == model.version + 1
    assert got[1].method == f"model:v{model.version + 1}"
    assert watcher.poll(model.version + 1) is None
    with pytest.raises(StoreError, match="not above"):
        ClassifierStore(redis_url).publish(newer)
    watcher.close()


def test_tampered_model_in_redis_is_refused(redis_url: str) -> None:
    doc = json.loads(load_shipped_model().to_json())
    doc["head"]["baseline"] = [9.0, 0.0, 0.0]
    client = redis.Redis.from_url(redis_url)
    client.set(Keys().classifier_model, json.dumps(doc))
    client.set(Keys().classifier_version, 7)
    client.close()
    with pytest.raises(ModelFormatError, match="checksum"):
        ClassifierWatcher(redis_url).poll(1)


def test_unreachable_redis_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        ClassifierWatcher("redis://127.0.0.1:1/0").poll(1)


@pytest.mark.timeout(600)  # retrain fits trees on the training rows (transfer)
def test_retrain_publishes_a_better_model_that_gateways_pick_up(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys("t")
    _record(redis_url, 250, keys)
    report = ClassifierStore(redis_url, keys).read_observations()
    assert len(report.samples) == 250 and report.skipped == 1
    assert report.samples[0].model == "m" and report.samples[0].slots  # the text slots came through Redis
    args = ["classifier", "retrain", "--redis-url", redis_url, "--prefix", "t", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] and out["published"] == 2, out
    (m,) = out["models"]
    assert m["served_model"] == "m" and m["candidate"]["accuracy"] > m["current"]["accuracy"]
    got = ClassifierWatcher(redis_url, keys=keys).poll(1)
    assert got is not None and got[0] == 2
    body, _ = shifted_requests(2)[1]  # a translation: long for this deployment
    assert got[1].predict(body, "chat").output_probs[2] > 0.5


@pytest.mark.timeout(600)
def test_retrain_transfers_the_training_rows_to_a_terse_served_model(redis_url: str) -> None:
    """A served model that answers at 0.45x the training model's length: few of its observations are long, so
    retrain fits it its own trees on the shipped training rows relabelled by the length shift the observations
    show; the published profile carries them and the predictor the watcher hands a gateway evaluates them.
    Its ~15 long answers are too few to count L's recall on: the decision rule is chosen on the expected recall
    under the out-of-fold probabilities (every observation's chance of being long), so the profile weighs L
    up, and the predictor names L for new requests of that model often enough to lift balanced accuracy well
    above the plain argmax's, for a little accuracy (measured: 0.554 / 0.668 against 0.499 / 0.728, 39 of 125
    long answers named L against 8)."""
    keys = Keys("tr")
    store = ClassifierStore(redis_url, keys)
    seen, new = terse_split(500, 4000, seed=2)
    store.add_observations(_feature_observations(seen, "terse"))
    report = retrain_once(store)
    (outcome,) = report.result.models
    assert report.published == 2 and outcome.kind.startswith("transfer"), report.text()
    got = ClassifierWatcher(redis_url, keys=keys).poll(1)
    assert got is not None
    predictor = got[1]
    assert predictor.model.doc["format_version"] == FORMAT_VERSION == 4
    profile = predictor.model.served["terse"]
    assert profile.head is not None and predictor.model.doc["head"] == load_shipped_model().doc["head"]
    body = {"model": "terse", "messages": [{"role": "user", "content": "Write a long essay about rivers."}]}
    pred = predictor.predict(body, "chat")
    values = feature_vector(pred.features, predictor.model.feature_names)
    residual = profile.residual(pred.text_slots, values)
    assert pred.output_probs == softmax_add(profile.head.raw3(values), residual)
    assert pred.output_probs != softmax_add(predictor.model.raw3(values), residual)  # not the shipped trees
    # what the terse model's trees learnt from the training rows: an essay is much less likely long
    shipped = ModelPredictor.shipped().predict(body, "chat")
    assert pred.output_probs[2] < shipped.output_probs[2] / 2, (pred, shipped)
    # the decision rule, on 4,000 requests of the terse model it never saw, as the gateway's predictor decides
    assert profile.decision[2] > 0.5, profile.decision  # L weighs more than M
    x = np.array([feature_vector(f, predictor.model.feature_names) for f, _ in new])
    y = labels(np.array([t for _, t in new]), ClassEdges())
    decided = batch_probabilities(predictor.model, profile, x, [None] * len(new)).argmax(axis=1)
    plain = batch_probabilities(predictor.model, profile, x, [None] * len(new), decided=False).argmax(axis=1)
    for row, cls in zip(x[:50].tolist(), decided[:50], strict=True):  # the per-request path decides alike
        assert int(np.argmax(softmax_add(profile.head.raw3(row), profile.residual(None, row)))) == cls
    chosen, before = score(y, decided), score(y, plain)
    assert (decided[y == 2] == 2).mean() > 0.2  # plain argmax: 8 of 125
    assert chosen.balanced_accuracy > before.balanced_accuracy + 0.03
    assert chosen.accuracy > before.accuracy - 0.08
    store.close()


def test_retrain_reports_errors_without_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classifier", "retrain", "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wattgate classifier retrain: error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in err


def test_retrain_publishes_nothing_without_enough_observations(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _record(redis_url, 10, Keys())
    assert main(["classifier", "retrain", "--redis-url", redis_url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["accepted"] and out["published"] is None
    assert "too few observations" in out["reason"]
    assert ClassifierStore(redis_url).current_version() == 0


def test_follow_classifier_swaps_in_each_new_version_and_keeps_the_model_on_a_refused_one(redis_url: str) -> None:
    """The loop the gateway and the LiteLLM routing both run: newer versions are handed over once each, a
    tampered document is logged and skipped (the current model stays)."""
    model = load_shipped_model()
    keys = Keys("follow")
    swapped: list[tuple[int, str]] = []
    warnings: list[str] = []
    store = ClassifierStore(redis_url, keys)

    async def run() -> None:
        got_one, warned = asyncio.Event(), asyncio.Event()

        def swap(version: int, predictor: ModelPredictor) -> None:
            swapped.append((version, predictor.method))
            got_one.set()

        class Seen(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                warnings.append(record.getMessage())
                warned.set()

        handler = Seen(logging.WARNING)
        logging.getLogger("wattgate.classifier.store").addHandler(handler)
        current = ModelPredictor(model)
        task = asyncio.create_task(
            follow_classifier(redis_url, ClassEdges(), keys, poll_s=0.01, current=current, swap=swap)
        )
        try:
            store.publish(with_served(model, {}, model.version + 1, {}))
            await got_one.wait()
            got_one.clear()
            doc = json.loads(with_served(model, {}, model.version + 2, {}).to_json())
            doc["head"]["baseline"] = [9.0, 0.0, 0.0]  # altered after signing
            store.client.set(keys.classifier_model, json.dumps(doc))
            store.client.set(keys.classifier_version, model.version + 2)
            await warned.wait()
            store.publish(with_served(model, {}, model.version + 3, {}))
            await got_one.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            logging.getLogger("wattgate.classifier.store").removeHandler(handler)

    asyncio.run(asyncio.wait_for(run(), 60))
    store.close()
    v = model.version
    assert swapped == [(v + 1, f"model:v{v + 1}"), (v + 3, f"model:v{v + 3}")]
    assert "checksum" in warnings[0] and f"keeping version {v + 1}" in warnings[0]
