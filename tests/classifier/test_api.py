from __future__ import annotations

import pytest

from wattgate.classifier.api import MaxTokensPredictor, cap_probabilities, choose_output_class, requested_max_tokens
from wattgate.profiles.classes import ClassEdges


@pytest.mark.parametrize(
    ("max_tokens", "expected"),
    [(50, (1.0, 0.0, 0.0)), (94, (1.0, 0.0, 0.0)), (95, (0.5, 0.5, 0.0)), (371, (0.5, 0.5, 0.0)), (372, (1 / 3,) * 3)],
)
def test_max_tokens_caps_the_class(max_tokens: int, expected: tuple[float, float, float]) -> None:
    got = MaxTokensPredictor().predict({"prompt": "hi", "max_tokens": max_tokens}, "completions").output_probs
    assert got == pytest.approx(expected)


def test_max_completion_tokens_wins_and_bad_values_are_ignored() -> None:
    assert requested_max_tokens({"max_tokens": 500, "max_completion_tokens": 20}) == 20
    assert requested_max_tokens({"max_tokens": True}) is None
    assert requested_max_tokens({"max_tokens": -3}) is None


def test_cap_keeps_relative_weights() -> None:
    assert cap_probabilities((0.2, 0.2, 0.6), 200, ClassEdges()) == pytest.approx((0.5, 0.5, 0.0))


def test_input_tokens_estimated_from_messages() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}]},
        ]
    }
    assert MaxTokensPredictor().predict(body, "chat").input_tokens == (400 + 16 + 40 + 16) // 4


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ((1.0, 0.0, 0.0), "S"),
        ((0.6, 0.4, 0.0), "M"),
        ((0.5, 0.25, 0.25), "M"),
        ((0.5, 0.2, 0.3), "L"),
        ((0.4, 0.2, 0.4), "L"),
        ((0.7, 0.2, 0.1), "S"),
    ],
)
def test_choose_output_class_leans_long(probs: tuple[float, float, float], expected: str) -> None:
    assert choose_output_class(probs).value == expected
