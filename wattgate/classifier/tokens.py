"""Input token counting: tiktoken encodings from the files litellm ships in its wheel, no network, no litellm import.

litellm's wheel carries tiktoken's BPE files under ``litellm/litellm_core_utils/tokenizers/``, named
as tiktoken's cache names them (sha1 of the download URL). We find that folder without importing
litellm (its import costs seconds and pulls in half of PyPI), check each file's sha256 against the
hash tiktoken itself expects, and let tiktoken read it from there. Encodings load lazily, once.

Model name -> encoding (``encoding_for_model``):
- ``gpt-4o*``, ``gpt-4.1*``, ``gpt-4.5*``, ``gpt-5*``, ``o1*``, ``o3*``, ``o4*``, ``chatgpt-4o*``, ``gpt-oss*``:
  ``o200k_base``
- ``text-davinci-002/003``, ``code-*``: ``p50k_base``
- everything else (``gpt-4``, ``gpt-3.5-turbo``, Llama, Mistral, Qwen, ...): ``cl100k_base``. For
  non-OpenAI models it is an approximation (typically within ~10-15% of the model's own tokenizer),
  close enough for class edges measured in hundreds of tokens.
If the files are missing or altered, counting falls back to ~4 characters per token (logged once).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

# Encoding -> (tiktoken's cache file name = sha1 of its URL, sha256 tiktoken expects of the content).
_FILES = {
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "p50k_base": (
        "ec7223a39ce59f226a68acc30dc1af2788490e15",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
}
DEFAULT_ENCODING = "cl100k_base"
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_P50K_PREFIXES = ("text-davinci-002", "text-davinci-003", "code-")
CHARS_PER_TOKEN = 4


def encoding_for_model(model: str | None) -> str:
    """The encoding name used for ``model`` (see the module docstring for the mapping)."""
    name = (model or "").lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_P50K_PREFIXES):
        return "p50k_base"
    return DEFAULT_ENCODING


def tokenizer_dir() -> Path | None:
    """litellm's bundled tokenizer folder, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def _pseudo_ids(text: str) -> list[int]:
    """Fallback "token ids": a stable checksum of each 4-character chunk."""
    return [zlib.crc32(text[i : i + CHARS_PER_TOKEN].encode()) & 0xFFFFF for i in range(0, len(text), CHARS_PER_TOKEN)]


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of a text; ``exact`` says whether a real BPE encoding does the counting."""

    name: str
    encode: Callable[[str], list[int]]
    exact: bool
    decode: Callable[[list[int]], str] | None = None  # None for the fallback
    # The same ids as a numpy array (tiktoken's buffer, no Python list of ints): the request path's form.
    encode_array: Callable[[str], NDArray[np.uint32]] | None = None

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def ids(self, text: str) -> list[int] | NDArray[np.uint32]:
        """``encode(text)``, as a uint32 array where the encoding can give one."""
        return self.encode(text) if self.encode_array is None else self.encode_array(text)


_lock = threading.Lock()
_counters: dict[str, TokenCounter] = {}


def _load(name: str) -> TokenCounter:
    # We never import litellm; should anything in this process do so later, keep it off the network.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    folder = tokenizer_dir()
    cache_name, sha256 = _FILES[name]
    path = folder / cache_name if folder else None
    if path is None or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        log.warning("tokenizer %s: litellm's bundled file is missing or altered; counting ~4 chars/token", name)
        return TokenCounter(name="chars/4", encode=_pseudo_ids, exact=False)
    import tiktoken_ext.openai_public as public  # type: ignore[import-untyped]  # noqa: PLC0415 (lazy: first use)
    from tiktoken import Encoding  # noqa: PLC0415

    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)  # tiktoken reads its cache file: verified above, no download
    try:
        enc = Encoding(**getattr(public, name)())
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    # encode_to_numpy with no special token allowed or disallowed is encode_ordinary's tokens, in a buffer
    as_array = functools.partial(enc.encode_to_numpy, disallowed_special=())
    return TokenCounter(name=name, encode=enc.encode_ordinary, exact=True, decode=enc.decode, encode_array=as_array)


def counter(encoding: str = DEFAULT_ENCODING) -> TokenCounter:
    """The (lazily loaded, shared) counter for an encoding name; unknown names get the default."""
    found = _counters.get(encoding)
    if found is not None:
        return found
    with _lock:
        if encoding not in _counters:
            _counters[encoding] = _load(encoding if encoding in _FILES else DEFAULT_ENCODING)
        return _counters[encoding]


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens of ``text`` with the encoding of ``model``."""
    return counter(encoding_for_model(model)).count(text)
