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
