"""The model document: JSON of fitted parameters (no pickle), checksummed, strictly validated, and its numpy inference.

A document holds a linear model over hashed token-id uni/bigrams of the last user message (its
three logits become features ``txt_S/M/L``, ``textmodel.py``), gradient-boosted trees over the
numeric features, and (format 2) the output-length distribution per class (``length``) and one
learnt profile per served model (``served``: name -> ``ServedProfile``; empty when shipped). Format 3
adds each profile's decision weights (``decision``), format 4 each profile's own trees (``head``: transferred
from the training rows, ``transfer.py``; null for none); format-3 documents load with none (the shipped
trees), format-2 documents with no decision weights either (the plain argmax), format-1 documents (no
``length``, no ``served``) with class-midpoint lengths. Arrays travel as
base64 of little-endian numpy buffers. ``sha256`` covers the canonical JSON of every other field, so
an altered file or Redis value is refused; the schema is checked field by field (shapes, index
ranges, finiteness) so a valid checksum cannot smuggle in an out-of-range index either.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ModelFormatError
from wattgate.classifier.length import LengthModel, midpoints, parse_length
from wattgate.classifier.served import ServedProfile, parse_served
from wattgate.classifier.textmodel import (
    SHORT_TEXT_IDS,
    TextModel,
    check_int,
    encode_array,
    need,
    ngram_indices,
    ngram_slots,
    parse_text,
)
from wattgate.classifier.trees import Trees, parse_trees
from wattgate.profiles.classes import ClassEdges

FORMAT = "wattgate-classifier"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
TEXT_FEATURES = ("txt_S", "txt_M", "txt_L")
# The characters of a request tokenized for its count and its text model's ids (``FeatureExtractor(sample_chars)``),
# kept in the document's notes as ``head_chars`` by the training that chose it: the gateway tokenizes what the
# model was trained on. Documents without the note were trained with 1,024 characters.
HEAD_NOTE = "head_chars"
LEGACY_HEAD_CHARS = 1024
_TOP_KEYS = {"format", "format_version", "version", "created_at", "notes", "edges", "feature_names", "text", "head"}
_TOP_KEYS_2 = _TOP_KEYS | {"length", "served"}
__all__ = ["SHORT_TEXT_IDS", "TextModel", "Trees", "encode_array", "ngram_indices", "ngram_slots"]


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    e = np.exp(z - z.max())
    out: NDArray[np.float64] = e / e.sum()
    return out


def softmax3(z: Sequence[float]) -> tuple[float, float, float]:
    """Softmax of three logits in plain floats (numpy's per-call overhead dominates at this size)."""
    a, b, c = z
    top = max(a, b, c)
    ea, eb, ec = math.exp(a - top), math.exp(b - top), math.exp(c - top)
    total = ea + eb + ec
    return (ea / total, eb / total, ec / total)


@dataclass(frozen=True)
class ClassifierModel:
    """A validated model document, ready to score feature vectors."""

    doc: dict[str, Any]
    version: int
    feature_names: tuple[str, ...]
    output_short_max: int
    output_medium_max: int
    text: TextModel
    trees: Trees
    length: LengthModel
    served: Mapping[str, ServedProfile]
    head_chars: int = LEGACY_HEAD_CHARS  # the request head its text model and count were trained on (``HEAD_NOTE``)

    def raw3(self, x: Sequence[float]) -> tuple[float, ...]:
        """The trees' three logits (``x``: every feature, in model order), the gateway's hot path."""
        return self.trees.raw3(x)

    def probabilities(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return softmax(self.trees.raw(x))

    def probabilities3(self, x: Sequence[float]) -> tuple[float, float, float]:
        """``probabilities`` as three floats, the gateway's hot path (``x``: every feature, in model order)."""
        quick = self.trees.quick
        if quick is not None:
            return softmax3(quick.raw(x))
        return softmax3(self.trees.raw(np.asarray(x, dtype=np.float64)).tolist())

    def probabilities_batch(self, xs: NDArray[np.float64]) -> NDArray[np.float64]:
        z = self.trees.raw_batch(np.asarray(xs, dtype=np.float64).reshape(-1, len(self.feature_names)))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
        return out

    def to_json(self) -> str:
        return json.dumps(self.doc, sort_keys=True, separators=(",", ":"))


def parse_model(raw: str | bytes | dict[str, Any], source: str = "model") -> ClassifierModel:
    """Validate a model document (checksum first, then every field); ``ModelFormatError`` says what is wrong."""
    try:
        doc = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{source}: not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{source}: not a wattgate classifier model")
    fmt = doc.get("format_version")
    if fmt not in READABLE_VERSIONS:
        raise ModelFormatError(f"{source}: format version {fmt!r}, this wattgate reads {READABLE_VERSIONS}")
    if doc.get("sha256") != checksum(doc):
        raise ModelFormatError(f"{source}: checksum mismatch: the model was altered or corrupted; refusing to load it")
    keys = _TOP_KEYS if fmt == 1 else _TOP_KEYS_2
    need(set(doc) - {"sha256"} == keys, f"unexpected fields {sorted(set(doc) ^ (keys | {'sha256'}))}")
    names = doc["feature_names"]
    need(
        isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
        "bad feature_names",
    )
    edges = doc["edges"]
    need(isinstance(edges, dict) and set(edges) == {"output_short_max", "output_medium_max"}, "bad edges")
    short_max = check_int(edges["output_short_max"], "edges.output_short_max", 1)
    medium_max = check_int(edges["output_medium_max"], "edges.output_medium_max", short_max + 1)
    text = parse_text(doc["text"])
    notes = doc["notes"]
    head_chars = LEGACY_HEAD_CHARS
    if isinstance(notes, dict) and HEAD_NOTE in notes:
        head_chars = check_int(notes[HEAD_NOTE], f"notes.{HEAD_NOTE}", 64, 1 << 24)
    if fmt == 1:
        length, served = midpoints(ClassEdges(output_short_max=short_max, output_medium_max=medium_max)), {}
    else:
        length = parse_length(doc["length"], "length")
        need(isinstance(doc["served"], dict), "served must be a mapping of model name -> profile")
        served = {str(k): parse_served(str(k), v, names, text.dim, fmt) for k, v in doc["served"].items()}
    return ClassifierModel(
        doc=doc,
        version=check_int(doc["version"], "version"),
        feature_names=tuple(names),
        output_short_max=short_max,
        output_medium_max=medium_max,
        text=text,
        trees=parse_trees(doc["head"], len(names)),
        length=length,
        served=served,
        head_chars=head_chars,
    )


def load_model(path: Path) -> ClassifierModel:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read model file {path}: {exc}") from exc
    return parse_model(raw, str(path))


def sign(doc: dict[str, Any]) -> dict[str, Any]:
    """Return ``doc`` with its checksum set."""
    out = {k: v for k, v in doc.items() if k != "sha256"}
    out["sha256"] = checksum(out)
    return out
