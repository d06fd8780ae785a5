"""The classifier seam the gateway calls: ``predict(body, endpoint) -> Prediction``, plus the max_tokens fallback.

``MaxTokensPredictor`` is the fallback while no trained model is configured: the input side is a
cheap character-based estimate and the output class comes from ``max_tokens`` alone (certain when
``max_tokens`` caps the class, uniform over the classes it leaves possible otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wattgate.profiles.classes import ClassEdges, LengthClass


@dataclass(frozen=True)
class Prediction:
    """What the router needs to know of a request before it is sent."""

    input_tokens: int
    output_probs: tuple[float, float, float]  # P(output class S), P(M), P(L)
    features: dict[str, float] = field(default_factory=dict)  # numeric features only, never text
    method: str = "max_tokens"  # how the probabilities were obtained
    # Modelled mean of the output length distribution (capped by max_tokens); None: not predicted.
    expected_output_tokens: float | None = None
    # Hashed uni/bigram slots of the last user message's head (what an Observation may keep instead of
    # text; see ``textmodel.py``) and the size of their hash space; empty when not computed.
    text_slots: list[int] = field(default_factory=list)
    text_dim: int = 0


class Predictor(Protocol):
    def predict(self, body: Mapping[str, Any], endpoint: str) -> Prediction:
        """``endpoint`` is ``chat`` or ``completions``; ``body`` is the parsed, validated request."""
        ...


def requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` wins over the deprecated ``max_tokens``, as in the OpenAI API."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def cap_probabilities(
    probs: tuple[float, float, float], max_tokens: int | None, edges: ClassEdges
) -> tuple[float, float, float]:
    """Zero the classes ``max_tokens`` makes impossible and renormalise (uniform if nothing is left)."""
    if max_tokens is None:
        return probs
    # an output must exceed the largest token count below a class to be of that class
    allowed = (max_tokens > 0, max_tokens > edges.output_short_max, max_tokens > edges.output_medium_max)
    kept = [p if ok else 0.0 for p, ok in zip(probs, allowed, strict=True)]
    total = sum(kept)
    if total <= 0:
        n = sum(allowed)
        kept = [1.0 / n if ok else 0.0 for ok in allowed]
        total = 1.0
    s, m, l_ = (p / total for p in kept)
    return (s, m, l_)


def _text_chars(body: Mapping[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(p) if isinstance(p, str) else 4 * len(p) if isinstance(p, list) else 0 for p in prompt)
    total = 0
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if isinstance(content, str):
            total += len(content) + 16
        elif isinstance(content, list):
            total += sum(len(part.get("text", "")) for part in content if isinstance(part, Mapping)) + 16
    return total


class MaxTokensPredictor:
    """The fallback predictor: ~4 characters per token, output class from ``max_tokens`` only."""

    def __init__(self, edges: ClassEdges | None = None) -> None:
        self.edges = edges or ClassEdges()

    def predict(self, body: Mapping[str, Any], endpoint: str) -> Prediction:
        input_tokens = max(1, _text_chars(body) // 4)
        probs = cap_probabilities((1 / 3, 1 / 3, 1 / 3), requested_max_tokens(body), self.edges)
        return Prediction(input_tokens=input_tokens, output_probs=probs, method="max_tokens")


@dataclass(frozen=True)
class DecisionThresholds:
    """Route to a longer output class once the chance of an output at least that long is high enough.

    Under-predicting sends a long request to a pool sized for short ones (SLO misses for everybody
    there); over-predicting only costs some energy. So the bar for "longer" is below 0.5.
    Defaults measured by ``bench/classifier.py`` on held-out ShareGPT: against argmax they halve
    under-predictions (15.5% -> 7.7%) for more over-predictions (17.8% -> 27.2%), and minimise an
    expected-cost proxy that charges an under-predicted class step 2 to 4 times an over-predicted one.
    """

    at_least_m: float = 0.35  # P(M) + P(L) >= this -> at least M
    at_least_l: float = 0.30  # P(L) >= this -> L


def choose_output_class(probs: tuple[float, float, float], thresholds: DecisionThresholds | None = None) -> LengthClass:
    """Turn output-class probabilities into the output class the router uses."""
    t = thresholds or DecisionThresholds()
    _, p_m, p_l = probs
    if p_l >= t.at_least_l:
        return LengthClass.L
    if p_m + p_l >= t.at_least_m:
        return LengthClass.M
    return LengthClass.S


def load_predictor(kind: str, edges: ClassEdges) -> Predictor:
    """``max_tokens``: route on ``max_tokens`` only; ``model``: the shipped classifier with its tokenizers
    loaded, or the ``max_tokens`` fallback when it cannot be loaded (said once, in the log)."""
    if kind == "max_tokens":
        return MaxTokensPredictor(edges)
    from wattgate.classifier.errors import ClassifierError  # noqa: PLC0415
    from wattgate.classifier.predictor import ModelPredictor  # noqa: PLC0415  (numpy, tokenizers: not at import)

    try:
        predictor = ModelPredictor.shipped(edges)
        predictor.warm_up()
    except ClassifierError as exc:
        logging.getLogger("wattgate.classifier").warning("classifier unavailable (%s); routing on max_tokens only", exc)
        return MaxTokensPredictor(edges)
    return predictor
