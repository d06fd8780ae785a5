"""The trained predictor the gateway calls: tokens + features + text logits + trees -> ``Prediction``."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from wattgate.classifier.api import Prediction, cap_probabilities, requested_max_tokens
from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.features import FeatureExtractor, feature_vector
from wattgate.classifier.model import TEXT_FEATURES, ClassifierModel, load_model, parse_model, softmax3
from wattgate.classifier.served import softmax_add
from wattgate.classifier.textmodel import Slots
from wattgate.profiles.classes import ClassEdges

MODEL_FILE = "model.json"
BASE_FEATURES_FILE = "base_features.npz"


def data_path(name: str) -> Path:
    return Path(str(resources.files("wattgate.classifier").joinpath("data", name)))


def load_shipped_model() -> ClassifierModel:
    """The model trained on ShareGPT that ships in the package."""
    return load_model(data_path(MODEL_FILE))


class ModelPredictor:
    """A ``Predictor`` backed by a model document; thread-safe (no mutable state after construction)."""

    def __init__(
        self, model: ClassifierModel, edges: ClassEdges | None = None, extractor: FeatureExtractor | None = None
    ) -> None:
        edges = edges or ClassEdges()
        if (edges.output_short_max, edges.output_medium_max) != (model.output_short_max, model.output_medium_max):
            raise ClassifierError(
                f"model v{model.version} was trained for output edges {model.output_short_max}/"
                f"{model.output_medium_max}, the gateway uses {edges.output_short_max}/{edges.output_medium_max}: "
                "retrain the classifier with these edges"
            )
        self.model = model
        self.edges = edges
        self.extractor = extractor or FeatureExtractor(model.head_chars)  # the head the model was trained on
        self.method = f"model:v{model.version}"
        self._in_model_order = operator.itemgetter(*model.feature_names)

    @classmethod
    def shipped(cls, edges: ClassEdges | None = None) -> ModelPredictor:
        return cls(load_shipped_model(), edges)

    @classmethod
    def from_json(cls, raw: str | bytes, edges: ClassEdges | None = None) -> ModelPredictor:
        return cls(parse_model(raw, "model from store"), edges)

    def warm_up(self, models: tuple[str, ...] = ("gpt-3.5-turbo", "gpt-4o")) -> None:
        """Load the tokenizers now (about a second each) rather than on the first request."""
        for model in models:
            self.predict({"model": model, "messages": [{"role": "user", "content": "warm up"}]}, "chat")

    def features(self, body: Mapping[str, Any], endpoint: str) -> tuple[int, dict[str, float]]:
        """Input tokens and every numeric feature the model uses (text logits included)."""
        input_tokens, feats, _ = self._extract(body, endpoint)
        return input_tokens, feats

    def _extract(self, body: Mapping[str, Any], endpoint: str) -> tuple[int, dict[str, float], Slots]:
        ext = self.extractor.extract(body, endpoint)
        feats = ext.features
        slots = self.model.text.slots(ext.ngram_ids)
        for name, value in zip(TEXT_FEATURES, self.model.text.logits_of(slots), strict=True):
            feats[name] = round(value, 4)
        return ext.input_tokens, feats, slots

    def _values(self, features: Mapping[str, float]) -> Sequence[float]:
        try:
            values: Sequence[float] = self._in_model_order(features)  # one C-level pass when every feature is there
        except KeyError:
            values = feature_vector(features, self.model.feature_names)
        return values

    def probabilities(self, features: Mapping[str, float]) -> tuple[float, float, float]:
        return self.model.probabilities3(self._values(features))

    def predict(self, body: Mapping[str, Any], endpoint: str) -> Prediction:
        input_tokens, feats, slots = self._extract(body, endpoint)
        max_tokens = requested_max_tokens(body)
        served, name = self.model.served, body.get("model")
        profile = served.get(name if isinstance(name, str) else "") if served else None  # "": requests without one
        if max_tokens is not None and max_tokens <= self.edges.output_short_max:
            probs = (1.0, 0.0, 0.0)  # only S fits: what cap_probabilities makes of any model output
        else:
            values = self._values(feats)
            raw = profile.head.raw3(values) if profile and profile.head else self.model.raw3(values)
            probs = softmax_add(raw, profile.residual(slots, values)) if profile else softmax3(raw)
            probs = cap_probabilities(probs, max_tokens, self.edges)
        length = profile.length if profile else self.model.length
        return Prediction(
            input_tokens=input_tokens,
            output_probs=probs,
            features=feats,
            method=f"{self.method}+{profile.name}" if profile else self.method,
            expected_output_tokens=length.expected(probs, max_tokens),
            text_slots=slots.tolist() if isinstance(slots, np.ndarray) else slots,
            text_dim=self.model.text.dim,
        )
