from __future__ import annotations

import random

import numpy as np
import pytest

from tests.classifier.shifted import TOPICS, shifted_requests, topic_requests
from wattgate.classifier.adapt import AdaptSettings, adapt, batch_probabilities, matrix
from wattgate.classifier.features import Sample
from wattgate.classifier.metrics import score
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.train import labels
from wattgate.classifier.transfer import load_base
from wattgate.profiles.classes import ClassEdges

# adaptation fits trees on the 31,934 training rows (transfer): minutes on a loaded 2-core VM
pytestmark = pytest.mark.timeout(600)


def _samples(requests: list[tuple[dict, int]], model: str = "m", slots: bool = True) -> list[Sample]:
    predictor = ModelPredictor.shipped()
    out = []
    for i, (body, tokens) in enumerate(requests):
        pred = predictor.predict({**body, "model": model}, "chat")
        out.append(Sample(pred.features, tokens, float(i), model, list(pred.text_slots) if slots else None))
    return out


def test_adaptation_learns_a_shifted_distribution() -> None:
    model = load_shipped_model()
    result = adapt(model, _samples(shifted_requests(300)), ClassEdges())
    assert result.accepted, result.reason
    (outcome,) = result.models
    assert outcome.name == "m" and outcome.n_holdout == 60 and outcome.text_slots
    assert outcome.new is not None and result.candidate is not None
    assert outcome.current.accuracy < 0.5
    assert outcome.new.accuracy > 0.9
    assert result.candidate.version == model.version + 1
    # the shipped parts stay as they are: what one served model taught never reaches another
    assert result.candidate.doc["text"] == model.doc["text"] and result.candidate.doc["head"] == model.doc["head"]
    assert set(result.candidate.served) == {"m"}


def test_text_slots_teach_what_the_features_cannot() -> None:
    """Answers whose length depends only on the topic word: the same template, so the same features."""
    requests = topic_requests(400)
    with_slots = adapt(load_shipped_model(), _samples(requests), ClassEdges())
    without = adapt(load_shipped_model(), _samples(requests, slots=False), ClassEdges())
    (a,), (b,) = with_slots.models, without.models
    assert a.new is not None and b.new is not None
    assert a.new.balanced_accuracy > 0.95, a.reason
    # the features (the shipped text logits among them) tell the topics apart only in part
    assert a.new.log_loss is not None and b.new.log_loss is not None and a.new.log_loss < b.new.log_loss / 3
    assert a.text_slots and not b.text_slots


def test_served_models_are_learnt_apart() -> None:
    """Two served models behind one gateway answer the same prompts at opposite lengths."""
    rng = random.Random(5)
    essays = [({"messages": [{"role": "user", "content": f"Write an essay about {t}."}]}, 0) for t in TOPICS * 30]
    rng.shuffle(essays)
    verbose = [(body, rng.randint(500, 900)) for body, _ in essays]
    terse = [(body, rng.randint(5, 60)) for body, _ in essays]
    samples = _samples(verbose, "verbose") + _samples(terse, "terse")
    result = adapt(load_shipped_model(), samples, ClassEdges())
    assert result.candidate is not None and set(result.candidate.served) == {"verbose", "terse"}, result.reason
    predictor = ModelPredictor(result.candidate)
    body = {"messages": [{"role": "user", "content": "Write an essay about jazz."}]}
    long_ = predictor.predict({**body, "model": "verbose"}, "chat")
    short = predictor.predict({**body, "model": "terse"}, "chat")
    other = predictor.predict({**body, "model": "unknown"}, "chat")
    assert long_.output_probs[2] > 0.9 and short.output_probs[0] > 0.9
    assert long_.method.endswith("+verbose") and other.method == "model:v2"
    # expected output tokens are this served model's own: within 15% of the answers' mean
    assert abs((long_.expected_output_tokens or 0) / 700 - 1) < 0.15
    assert (short.expected_output_tokens or 0) < 60


def test_no_swap_without_enough_observations() -> None:
    model = load_shipped_model()
    result = adapt(model, _samples(shifted_requests(20)), ClassEdges())
    assert not result.accepted and result.candidate is None
    assert result.skipped == {"m": 20}
    assert "too few observations" in result.reason


def test_no_swap_when_the_served_model_answers_like_the_base_data() -> None:
    """Observations that the shipped model already predicts well teach nothing: the profile is refused."""
    model = load_shipped_model()
    x, out = load_base(model)
    rows = np.random.default_rng(0).choice(len(out), 400, replace=False)
    samples = [
        Sample(dict(zip(model.feature_names, map(float, x[r]), strict=True)), int(out[r]), float(i), "m", None)
        for i, r in enumerate(rows)
    ]
    result = adapt(model, samples, ClassEdges(), settings=AdaptSettings(min_gain=0.02))
    assert not result.accepted, result.reason


def test_the_decision_rule_is_learnt_per_served_model() -> None:
    """A served model that answers 3 in 4 requests at length; for half the topics a short answer is only a
    little less likely than a long one. The calibrated probabilities then mostly say L (balanced accuracy
    ~0.7); the decision weights adaptation learns out of fold name S for those topics, giving up a little
    accuracy at most for a lot of balanced accuracy, and they travel with the profile to the predictor."""
    rng = random.Random(3)
    requests = []
    for body, base_tokens in topic_requests(600, seed=3):
        short_topic = base_tokens < 100
        requests.append((body, rng.randint(10, 60) if short_topic and rng.random() < 0.48 else rng.randint(450, 800)))
    model = load_shipped_model()
    samples = _samples(requests)
    result = adapt(model, samples, ClassEdges())
    assert result.candidate is not None, result.reason
    (outcome,) = result.models
    profile = result.candidate.served["m"]
    assert profile.decision[0] - profile.decision[2] > 0, profile.decision  # S weighs more against L
    hold = samples[-outcome.n_holdout :]
    x = matrix(hold, model.feature_names)
    y = labels(np.array([s.output_tokens for s in hold]), ClassEdges())
    plain = batch_probabilities(model, profile, x, [s.slots for s in hold], decided=False).argmax(axis=1)
    decided = batch_probabilities(model, profile, x, [s.slots for s in hold]).argmax(axis=1)
    assert score(y, decided).balanced_accuracy > score(y, plain).balanced_accuracy + 0.08
    assert score(y, decided).accuracy > score(y, plain).accuracy - 0.08
    # the predictor the gateway loads decides the same way
    predictor = ModelPredictor(result.candidate)
    got = [np.argmax(predictor.predict({**s_body, "model": "m"}, "chat").output_probs) for s_body, _ in requests[-5:]]
    assert got == decided[-5:].tolist()
