from __future__ import annotations

from tests.classifier.shifted import shifted_requests
from wattgate.classifier.adapt import AdaptSettings, adapt, load_base
from wattgate.classifier.features import Sample
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.profiles.classes import ClassEdges

FAST = AdaptSettings(base_limit=3000)


def _samples(n: int) -> list[Sample]:
    predictor = ModelPredictor.shipped()
    return [
        Sample(predictor.features(body, "chat")[1], tokens, float(i))
        for i, (body, tokens) in enumerate(shifted_requests(n))
    ]


def test_adaptation_learns_a_shifted_distribution() -> None:
    model = load_shipped_model()
    result = adapt(model, load_base(model), _samples(300), ClassEdges(), settings=FAST)
    assert result.accepted, result.reason
    assert result.n_holdout == 60
    assert result.new is not None and result.candidate is not None
    assert result.current.accuracy < 0.5
    assert result.new.accuracy > 0.9
    assert result.candidate.version == model.version + 1
    assert result.candidate.doc["text"] == model.doc["text"]  # the text part is not refitted (no text is stored)


def test_no_swap_without_enough_observations() -> None:
    model = load_shipped_model()
    result = adapt(model, load_base(model), _samples(20), ClassEdges(), settings=FAST)
    assert not result.accepted and result.candidate is None
    assert "too few observations" in result.reason


def test_no_swap_when_observations_look_like_the_base_data() -> None:
    model = load_shipped_model()
    base = load_base(model)
    samples = [
        Sample(dict(zip(model.feature_names, map(float, row), strict=True)), int(out), float(i))
        for i, (row, out) in enumerate(zip(base.x[-200:], base.output_tokens[-200:], strict=True))
    ]
    result = adapt(model, base, samples, ClassEdges(), settings=AdaptSettings(base_limit=3000, min_gain=0.05))
    assert not result.accepted, result.reason
