"""The hot path's faster forms give exactly what the plain definitions give."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from wattgate.classifier.features import _text_features
from wattgate.classifier.model import (
    SHORT_TEXT_IDS,
    ClassifierModel,
    TextModel,
    ngram_indices,
    ngram_slots,
    softmax,
    softmax3,
)
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.quickscore import MAX_DEPTH, build


def _reference_ngrams(ids: list[int], dim: int) -> np.ndarray:
    a = np.asarray(ids, dtype=np.int64)
    uni = (a * 2654435761) % dim
    bi = ((a[:-1] * 1000003 + a[1:]) * 2654435761) % dim
    return np.unique(np.concatenate([uni, bi]))


@pytest.mark.parametrize("n", [1, 2, 3, 50, 256])
def test_ngram_indices_match_the_plain_definition(n: int) -> None:
    rng = np.random.default_rng(n)
    ids = [int(v) for v in rng.integers(0, 200_000, n)]
    ids += ids[: n // 2]  # repeats: distinct slots only
    np.testing.assert_array_equal(ngram_indices(ids, 1 << 16), _reference_ngrams(ids, 1 << 16))
    assert ngram_indices([], 1 << 16).size == 0


@pytest.mark.parametrize("dim", [1 << 16, 1000, 4099])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 40, SHORT_TEXT_IDS])
def test_ngram_slots_match_numpy_including_int64_wraparound(n: int, dim: int) -> None:
    rng = np.random.default_rng(n + dim)
    ids = [int(v) for v in rng.integers(0, 2**31 - 1, n)]
    ids += ids[: n // 3]
    assert ngram_slots(ids, dim) == ngram_indices(ids, dim).tolist()


def test_text_logits3_are_the_same_bits_as_numpy() -> None:
    """The plain-Python sums for short texts run in numpy's order: equal floats, not just close ones."""
    rng = np.random.default_rng(7)
    dim = 1 << 12
    model = TextModel(dim, rng.normal(size=(3, dim)).astype(np.float32), rng.normal(size=3))
    for n in [0, 1, 2, 5, 17, 40, SHORT_TEXT_IDS, SHORT_TEXT_IDS + 1, 256]:
        for _ in range(20):
            ids = [int(v) for v in rng.integers(0, 100_000, n)]
            assert model.logits3(ids) == tuple(model.logits(ids).tolist())


@pytest.mark.parametrize(
    "text",
    [
        "Write an ESSAY, briefly! How does it work?",
        "Kelvin \u212a-sign, caf\u00e9 na\u00efve \u00fcber-write\u00e9 compose2draft",
        "\u5199\u4e00\u7bc7 essay \ud800 lone surrogate, then list",
        "   ",
        "x" * 1200 + " explain " + "y" * 400 + " tl;dr in detail",
        "write at least 500 words",
    ],
)
def test_word_cues_match_the_regex_definition(text: str) -> None:
    """Words are maximal runs of a-z in the lowercased probe, as ``[a-z]+`` finds them."""
    feats = _text_features(text)
    probe = (text[:1000] + "\n" + text[-300:] if len(text) > 1000 else text).lower()
    words = set(re.findall(r"[a-z]+", probe))
    assert feats["cue_long"] == float("essay" in words)
    assert feats["cue_write"] == float(bool(words & {"write", "compose", "draft", "create", "generate"}))
    assert feats["cue_list"] == float("list" in words)
    first = re.search(r"[a-z]+", probe)
    assert feats["cue_question"] == float(first is not None and first.group(0) in {"how", "what", "is"})
    assert feats["cue_greeting"] == 0.0


def test_softmax3_matches_numpy() -> None:
    z = [0.3, -1.2, 2.5]
    np.testing.assert_allclose(softmax3(z), softmax(np.array(z)), rtol=1e-15)


def test_quickscorer_gives_the_walks_floats(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    """Per-feature scoring ends in the same leaves and sums them in the same order as the tree walk."""
    for model in (tiny[0], load_shipped_model()):
        trees = model.trees
        assert trees.quick is not None
        rng = np.random.default_rng(3)
        thresholds = trees.threshold[trees.left != np.arange(trees.left.size)]
        for i in range(300):
            x = rng.normal(scale=3.0, size=len(model.feature_names))
            if i % 3 == 0:  # values exactly on split thresholds: ``<=`` goes left
                x[rng.integers(0, x.size, 4)] = rng.choice(thresholds, 4)
            if i % 7 == 0:
                x[rng.integers(0, x.size)] = np.nan  # NaN goes right, as in the walk
            assert trees.quick.raw(x.tolist()) == tuple(trees.raw(x).tolist())


def test_trees_deeper_than_the_quickscorer_keep_the_walk(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    t = tiny[0].trees
    arrays = (t.feature, t.threshold, t.left, t.right, t.value)
    assert build(t.n_trees, t.n_nodes, MAX_DEPTH + 1, arrays, t.baseline) is None


def test_a_max_tokens_that_allows_only_short_answers_is_certain() -> None:
    predictor = ModelPredictor.shipped()
    body = {"model": "m", "messages": [{"role": "user", "content": "Write a long essay on the history of Rome."}]}
    for cap in (1, 60, 94):
        assert predictor.predict({**body, "max_tokens": cap}, "chat").output_probs == (1.0, 0.0, 0.0)
    assert predictor.predict({**body, "max_tokens": 95}, "chat").output_probs[1] > 0
