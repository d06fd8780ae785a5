"""The hot path's faster forms give exactly what the plain definitions give."""

from __future__ import annotations

import re

import numpy as np
import pytest

from wattgate.classifier.features import _text_features
from wattgate.classifier.model import SHORT_TEXT_IDS, TextModel, ngram_indices, ngram_slots, softmax, softmax3


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
