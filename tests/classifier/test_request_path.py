"""The request path's faster forms give what the code before them gave (pinned), and what their definitions give."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wattgate.classifier import tokens
from wattgate.classifier.features import FeatureExtractor, _head
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.served import CLIP, Linear

PINS = Path(__file__).with_name("request_path_pins.json")


def long_bodies() -> Iterator[dict[str, Any]]:
    """Long, many-message, JSON-heavy, code and non-ASCII requests: the held-out tail's kinds, made bigger."""
    para = (
        "Please write at least 300 words, in 3 short paragraphs, about how always-on keywords and headlines work; "
        "list 7 ideas. Café naïve — 東京 ✓. "
    )
    code = "def f(x):\n    return {'a': [x, (x + 1)], 'b': x * 2}  # 5 lines\n" * 40
    items = [{"id": i, "name": f"item {i}", "tags": ["a", "b"], "ok": True} for i in range(120)]
    yield {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": para * 120}]}
    turns = [{"role": r, "content": (para if r == "user" else code) * 8} for r in ("user", "assistant") * 5]
    yield {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            *turns,
            {"role": "user", "content": "Continue: give me five catchy slogans in under 50 words?"},
        ],
        "max_tokens": 500,
    }
    yield {
        "model": "m",
        "messages": [{"role": "user", "content": "Summarize this JSON: " + json.dumps({"items": items})}],
        "tools": [{"type": "function"}],
        "response_format": {"type": "json_object"},
        "temperature": 0.2,
    }
    parts = [{"type": "text", "text": code}, {"type": "text", "text": para}]
    yield {"model": "m", "messages": [{"role": "user", "content": parts}]}
    yield {"model": "m", "prompt": ["Once upon a time ", "there were 12 lines of verse. " * 200]}


def test_long_requests_give_the_pinned_predictions() -> None:
    """Pinned from the code before the request-path work (bounded regex scans, token-id arrays, fewer numpy
    calls): the same input tokens, features, probabilities and text slots, to the last bit."""
    predictor = ModelPredictor.shipped()
    pins = json.loads(PINS.read_text())
    bodies = list(long_bodies())
    assert len(pins) == len(bodies)
    for body, pin in zip(bodies, pins, strict=True):
        got = predictor.predict(body, "completions" if "prompt" in body else "chat")
        assert got.input_tokens == pin["input_tokens"]
        assert got.features == pin["features"]
        assert list(got.output_probs) == pin["probs"]
        assert got.text_slots == pin["slots"]
    assert pins[1]["input_tokens"] > 50_000  # a 50,000-token conversation is among them


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_token_id_arrays_are_encode_ordinary(encoding: str) -> None:
    counter = tokens.counter(encoding)
    for text in ["", "hello world", "special <|endoftext|> and <|fim_prefix|> stay text", "naïve 東京 ```x```" * 50]:
        ids = counter.ids(text)
        assert isinstance(ids, np.ndarray)
        assert ids.tolist() == counter.encode(text)


def test_the_fallback_counter_gives_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tokens, "tokenizer_dir", lambda: tmp_path)
    counter = tokens._load("cl100k_base")
    assert counter.ids("x" * 40) == counter.encode("x" * 40) and len(counter.ids("x" * 40)) == 10


@pytest.mark.parametrize("n", [0, 1, 5, 44])
def test_the_residual_clips_as_np_clip(n: int) -> None:
    rng = np.random.default_rng(n)
    index = tuple(int(i) for i in rng.choice(44, n, replace=False))
    linear = Linear(index, rng.normal(size=n), rng.uniform(0.1, 2.0, n), rng.normal(size=(3, n)))
    for k in range(200):
        x = rng.normal(scale=8.0, size=44)
        if k % 5 == 0:
            x[rng.integers(0, 44)] = np.nan
        v = np.clip(np.array([x[i] for i in index], dtype=np.float64), linear.lo, linear.hi)
        np.testing.assert_array_equal(linear.logits(tuple(x.tolist())), linear.w_scaled @ v + linear.offset)
    assert CLIP > 0


def test_values_at_a_features_lowest_threshold_fail_no_test() -> None:
    """The scorer skips a value at or below a feature's lowest threshold: the walk's leaves there and just above."""
    trees = load_shipped_model().trees
    assert trees.quick is not None
    for f, lowest, _, _ in trees.quick.scan:
        for value in (lowest, np.nextafter(lowest, np.inf), np.nextafter(lowest, -np.inf)):
            x = np.zeros(trees.feature.max() + 1)
            x[f] = value
            assert trees.quick.raw(x.tolist()) == tuple(trees.raw(x).tolist())


def test_dense_non_latin_heads_are_cut_to_the_budget_in_bytes() -> None:
    """A CJK head is cut to ~1,024 UTF-8 bytes (~340 characters, ~300 tokens, not ~1,000); ASCII and Latin text
    with accents keep their 1,024 characters; the count stays close to the exact one."""
    cjk = ("请用三段话解释一下机器学习中的梯度下降算法，并给出一个简单的例子。" * 100)[:3000]
    head = _head(cjk, 1024)
    assert cjk.startswith(head) and 300 < len(head) < 350 and len(head.encode()) <= 1024
    latin = "Café naïve — déjà vu, s'il vous plaît. " * 60
    assert _head(latin, 1024) == latin[:1024]
    assert _head("plain ascii " * 200, 1024) == ("plain ascii " * 200)[:1024]
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": cjk}]}
    sampled = FeatureExtractor().extract(body, "chat")
    exact = FeatureExtractor(sample_chars=10**9).extract(body, "chat").input_tokens
    assert not sampled.exact_count and abs(sampled.input_tokens - exact) / exact < 0.05
    assert len(sampled.ngram_ids) == 256  # the text model still reads a full head
    short = {"model": "m", "messages": [{"role": "user", "content": cjk[:600]}]}  # 600 chars, 1,800 bytes: sampled
    assert not FeatureExtractor().extract(short, "chat").exact_count
