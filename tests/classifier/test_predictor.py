from __future__ import annotations

import json

import pytest

from wattgate.classifier import tokens
from wattgate.classifier.api import Prediction, choose_output_class
from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.predictor import ModelPredictor
from wattgate.profiles.classes import ClassEdges, LengthClass


@pytest.fixture(scope="module")
def predictor() -> ModelPredictor:
    return ModelPredictor.shipped()


def _chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_probabilities_are_sane(predictor: ModelPredictor) -> None:
    pred = predictor.predict(_chat("Tell me about the history of Rome."), "chat")
    assert isinstance(pred, Prediction)
    assert sum(pred.output_probs) == pytest.approx(1.0)
    assert all(0.0 < p < 1.0 for p in pred.output_probs)
    assert pred.method.startswith("model:v")
    assert all(isinstance(v, float) for v in pred.features.values())
    json.dumps(pred.features)  # goes to Redis as JSON


def test_prompts_that_ask_for_long_answers_get_more_mass_on_long(predictor: ModelPredictor) -> None:
    long_ask = _chat("Write a detailed 2000-word essay on the causes of the First World War, with an outline.")
    short_ask = _chat("Translate 'good morning' to French. Answer with one word only.")
    p_long = predictor.predict(long_ask, "chat").output_probs
    p_short = predictor.predict(short_ask, "chat").output_probs
    assert p_long[2] > p_short[2]
    assert p_short[0] > p_long[0]
    assert choose_output_class(p_long) is LengthClass.L


def test_max_tokens_caps_with_certainty(predictor: ModelPredictor) -> None:
    body = _chat("Write a detailed 2000-word essay on rivers.", max_tokens=60)
    assert predictor.predict(body, "chat").output_probs == (1.0, 0.0, 0.0)
    capped = predictor.predict(_chat("Write a long essay.", max_completion_tokens=200), "chat").output_probs
    assert capped[2] == 0.0 and capped[0] + capped[1] == pytest.approx(1.0)


def test_completions_endpoint(predictor: ModelPredictor) -> None:
    pred = predictor.predict({"model": "m", "prompt": "Once upon a time"}, "completions")
    assert pred.input_tokens == 4
    assert pred.features["endpoint_chat"] == 0.0


def test_edges_other_than_the_models_are_refused(predictor: ModelPredictor) -> None:
    with pytest.raises(ClassifierError, match="retrain"):
        ModelPredictor(predictor.model, ClassEdges(output_short_max=50, output_medium_max=300))


def test_warm_up_loads_the_tokenizers(predictor: ModelPredictor) -> None:
    predictor.warm_up()
    assert {"cl100k_base", "o200k_base"} <= set(tokens._counters)
