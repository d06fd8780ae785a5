"""A deployment whose model answers the opposite of ShareGPT: long translations, two-line essays."""

from __future__ import annotations

import random
from typing import Any

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
