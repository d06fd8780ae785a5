"""The request head a model reads: recorded by training in the document, used by the predictor, kept by adaptation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from wattgate.classifier.errors import ModelFormatError
from wattgate.classifier.features import DEFAULT_SAMPLE_CHARS, NGRAM_HEAD_TOKENS, FeatureExtractor
from wattgate.classifier.model import HEAD_NOTE, LEGACY_HEAD_CHARS, ClassifierModel, parse_model, sign
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import with_served

PARAGRAPH = "Explain, step by step, how a heat pump moves heat from a cold room into a warm one, with numbers. "


def with_head(model: ClassifierModel, head: int | None) -> ClassifierModel:
    doc = json.loads(model.to_json())
    doc["notes"] = {k: v for k, v in doc["notes"].items() if k != HEAD_NOTE}
    if head is not None:
        doc["notes"][HEAD_NOTE] = head
    return parse_model(sign(doc))


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": text}]}


def test_the_shipped_model_reads_the_default_head() -> None:
    """Training (``scripts/train_classifier.py``: ``FeatureExtractor()``) records its head in the shipped model; the
    default head is that one, so every default extractor (replay's prompt fitting, tests) counts as the gateway does."""
    model = load_shipped_model()
    assert model.head_chars == DEFAULT_SAMPLE_CHARS
    assert ModelPredictor(model).extractor.sample_chars == DEFAULT_SAMPLE_CHARS


@pytest.mark.parametrize("head", [256, 512, 2048])
def test_the_predictor_tokenizes_the_head_its_model_was_trained_on(
    tiny: tuple[ClassifierModel, Any, np.ndarray], head: int
) -> None:
    predictor = ModelPredictor(with_head(tiny[0], head))
    assert predictor.extractor.sample_chars == head
    text = PARAGRAPH * 60  # ~6,000 ASCII characters: sampled at any of these heads
    enc = counter("cl100k_base")
    got = predictor.predict(chat(text), "chat")
    # training's ids (``FeatureExtractor(head).extract(...).ngram_ids``): the head's first characters, tokenized, cut
    ids = enc.encode(text[:head])[:NGRAM_HEAD_TOKENS]
    assert FeatureExtractor(head).extract(chat(text), "chat").ngram_ids.tolist() == ids
    assert got.text_slots == list(predictor.model.text.slots(ids))
    assert predictor.predict(chat(text), "chat") == got  # deterministic: the same cut, the same prediction
    assert got.input_tokens == pytest.approx(enc.count(text) + 7, rel=0.05)  # the sampled count stays close


def test_documents_without_the_note_read_the_legacy_head(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    model = with_head(tiny[0], None)
    assert model.head_chars == LEGACY_HEAD_CHARS == 1024
    assert ModelPredictor(model).extractor.sample_chars == 1024


@pytest.mark.parametrize("bad", [10, "512", 1.5, True, -1])
def test_a_bad_head_note_is_refused(tiny: tuple[ClassifierModel, Any, np.ndarray], bad: Any) -> None:
    doc = json.loads(tiny[0].to_json())
    doc["notes"][HEAD_NOTE] = bad
    with pytest.raises(ModelFormatError, match=HEAD_NOTE):
        parse_model(sign(doc))


def test_a_new_version_keeps_the_head(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    """``with_served`` (adaptation's output, a store's republish) keeps the text model and trees, so their head too,
    whatever notes its caller passes."""
    model = with_head(tiny[0], 384)
    renewed = with_served(model, {}, model.version + 1, {"why": "test"})
    assert renewed.head_chars == 384 and renewed.doc["notes"]["why"] == "test"
    assert ModelPredictor(renewed).extractor.sample_chars == 384
