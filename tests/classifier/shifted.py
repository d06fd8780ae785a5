"""A deployment whose model answers the opposite of ShareGPT: long translations, two-line essays."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from wattgate.classifier.predictor import load_shipped_model
from wattgate.classifier.transfer import load_base

TOPICS = ["rivers", "taxes", "the moon", "bread", "chess", "volcanoes", "jazz", "trains", "bees", "glass"]
LANGS = ["French", "German", "Spanish", "Italian", "Dutch"]


def shifted_requests(n: int, seed: int = 0) -> list[tuple[dict[str, Any], int]]:
    """(chat body, output tokens): translations get ~900 tokens, essays ~25 (the reverse of the base data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        if i % 2:
            text = f"Translate this sentence about {topic} into {rng.choice(LANGS)}: 'I like {topic}.'"
            tokens = rng.randint(700, 1100)
        else:
            text = f"Write a detailed essay about {topic}, with an introduction and a conclusion."
            tokens = rng.randint(10, 60)
        out.append(({"model": "m", "messages": [{"role": "user", "content": text}]}, tokens))
    return out


LONG_TOPICS = TOPICS[:5]


def topic_requests(n: int, seed: int = 0) -> list[tuple[dict[str, Any], int]]:
    """(chat body, output tokens) where only the topic word decides the length: the first five topics get
    ~600 tokens, the others ~30, all from one template (so every engineered feature is the same)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        tokens = rng.randint(450, 800) if topic in LONG_TOPICS else rng.randint(10, 60)
        text = f"Tell me about {topic}."
        out.append(({"model": "m", "messages": [{"role": "user", "content": text}]}, tokens))
    return out


def terse_split(
    n: int, n_new: int, factor: float = 0.45, seed: int = 0
) -> tuple[list[tuple[dict[str, float], int]], list[tuple[dict[str, float], int]]]:
    """(features, output tokens) of ``n`` shipped training rows answered by a served model that says ``factor``
    times what the training model said (log-normal noise σ 0.25; its long answers are rare, ~3%), and of
    ``n_new`` other training rows answered the same way (requests it never saw)."""
    model = load_shipped_model()
    x, out = load_base(model)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(out), n, replace=False)
    noise = np.exp(rng.normal(0.0, 0.25, n))
    new = rng.choice(np.setdiff1d(np.arange(len(out)), rows), n_new, replace=False)
    new_noise = np.exp(rng.normal(0.0, 0.25, n_new))

    def answered(index: np.ndarray, noise: np.ndarray) -> list[tuple[dict[str, float], int]]:
        return [
            (dict(zip(model.feature_names, map(float, x[r]), strict=True)), max(1, round(factor * out[r] * e)))
            for r, e in zip(index, noise, strict=True)
        ]

    return answered(rows, noise), answered(new, new_noise)
