"""The model document: JSON of fitted parameters (no pickle), checksummed, strictly validated, and its numpy inference.

A document holds two parts: a linear model over hashed token-id uni/bigrams of the last user
message (its three logits become features ``txt_S/M/L``), and gradient-boosted trees over the
numeric features. Arrays travel as base64 of little-endian numpy buffers. ``sha256`` covers the
canonical JSON of every other field, so an altered file or Redis value is refused; the schema is
checked field by field (shapes, index ranges, finiteness) so a valid checksum cannot smuggle in an
out-of-range index either.
"""

from __future__ import annotations

import array
import base64
import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ModelFormatError
from wattgate.classifier.quickscore import QuickScorer, build

FORMAT = "wattgate-classifier"
FORMAT_VERSION = 1
TEXT_FEATURES = ("txt_S", "txt_M", "txt_L")
_TOP_KEYS = {"format", "format_version", "version", "created_at", "notes", "edges", "feature_names", "text", "head"}
_HASH_A = 2654435761
_HASH_B = 1000003
SHORT_TEXT_IDS = 64  # up to this many token ids, text logits are summed in plain Python


def encode_array(arr: NDArray[Any], dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode("ascii")


def decode_array(text: Any, dtype: str, size: int, what: str) -> NDArray[Any]:
    if not isinstance(text, str):
        raise ModelFormatError(f"model: {what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ModelFormatError(f"model: {what} is not valid base64") from exc
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if arr.size != size:
        raise ModelFormatError(f"model: {what} has {arr.size} values, expected {size}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ModelFormatError(f"model: {what} holds non-finite values")
    return arr.astype(dtype)


def ngram_indices(ids: Sequence[int], dim: int) -> NDArray[np.int64]:
    """Distinct hashed uni- and bigram slots of a token-id sequence, sorted.

    One buffer, in-place arithmetic and a sort + neighbour mask instead of ``np.unique``: the same
    result in about 2/3 of the time (this runs on every request).
    """
    a = np.asarray(ids, dtype=np.int64)
    n = a.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    h = np.empty(2 * n - 1, dtype=np.int64)
    np.multiply(a[:-1], _HASH_B, out=h[n:])
    h[n:] += a[1:]
    h[:n] = a
    h *= _HASH_A
    h %= dim
    h.sort()
    keep = np.empty(h.size, dtype=np.bool_)
    keep[0] = True
    np.not_equal(h[1:], h[:-1], out=keep[1:])
    out: NDArray[np.int64] = h[keep]
    return out


_U64 = (1 << 64) - 1
_I64_TOP = 1 << 63


def ngram_slots(ids: Sequence[int], dim: int) -> list[int]:
    """``ngram_indices`` in plain Python, for short sequences (numpy's per-call cost dominates there).

    numpy computes the bigram hash in int64, which wraps around; a power-of-two ``dim`` divides 2**64,
    so the residue is the same without wrapping, otherwise the wrap-around is reproduced.
    """
    if not ids:
        return []
    a, b = _HASH_A, _HASH_B
    slots = {(i * a) % dim for i in ids}  # token ids are < 2**31: no int64 overflow here
    pairs = itertools.pairwise(ids)
    if dim & (dim - 1) == 0:
        slots.update(((i * b + j) * a) % dim for i, j in pairs)
    else:
        for i, j in pairs:
            h = ((i * b + j) * a) & _U64
            slots.add((h - (1 << 64) if h >= _I64_TOP else h) % dim)
    return sorted(slots)


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class TextModel:
    dim: int
    weights: NDArray[np.float32]  # (3, dim)
    bias: NDArray[np.float64]  # (3,)
    # Serving copies: one contiguous float64 row of 3 weights per slot, so a request gathers rows; the
    # same as a flat array of Python-readable doubles for short texts, and the bias as floats.
    rows: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    flat: array.array[float] = field(init=False, repr=False, compare=False)
    bias3: tuple[float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = np.ascontiguousarray(self.weights.T, dtype=np.float64)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "flat", array.array("d", rows.tobytes()))
        b0, b1, b2 = self.bias.tolist()
        object.__setattr__(self, "bias3", (b0, b1, b2))

    def logits(self, ids: Sequence[int]) -> NDArray[np.float64]:
        idx = ngram_indices(ids, self.dim)
        if idx.size == 0:
            return self.bias.copy()
        out: NDArray[np.float64] = self.bias + self.rows[idx].sum(axis=0) / math.sqrt(idx.size)
        return out

    def logits3(self, ids: Sequence[int]) -> tuple[float, float, float]:
        """``logits`` as three floats, the gateway's hot path: the same sums in the same order (so the
        same bits), in plain Python below ``SHORT_TEXT_IDS`` token ids, where numpy's call overhead
        would be most of the cost."""
        if len(ids) > SHORT_TEXT_IDS:
            l0, l1, l2 = self.logits(ids).tolist()
            return (l0, l1, l2)
        slots = ngram_slots(ids, self.dim)
        b0, b1, b2 = self.bias3
        if not slots:
            return (b0, b1, b2)
        w = self.flat
        s0 = s1 = s2 = 0.0
        for k in slots:
            j = 3 * k
            s0 += w[j]
            s1 += w[j + 1]
            s2 += w[j + 2]
        r = math.sqrt(len(slots))
        return (b0 + s0 / r, b1 + s1 / r, b2 + s2 / r)


@dataclass(frozen=True)
class Trees:
    """Boosted trees flattened into arrays (leaves point to themselves) and walked all at once."""

    baseline: NDArray[np.float64]  # (n_classes,)
    n_trees: int
    n_nodes: int  # nodes per tree (padded)
    depth: int
    feature: NDArray[np.int64]  # (n_trees * n_nodes,)
    threshold: NDArray[np.float64]
    left: NDArray[np.int64]  # global node index
    right: NDArray[np.int64]
    value: NDArray[np.float64]
    # Serving copies: the roots, and children interleaved (2i: right, 2i+1: left) so a step is one gather.
    roots: NDArray[np.int64] = field(init=False, repr=False, compare=False)
    children: NDArray[np.int64] = field(init=False, repr=False, compare=False)
    # The request path's scorer (same results, a fraction of the numpy calls); None for deep trees.
    quick: QuickScorer | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children = np.empty(2 * self.left.size, dtype=np.int64)
        children[0::2], children[1::2] = self.right, self.left
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "roots", np.arange(self.n_trees, dtype=np.int64) * self.n_nodes)
        arrays = (self.feature, self.threshold, self.left, self.right, self.value)
        object.__setattr__(self, "quick", build(self.n_trees, self.n_nodes, self.depth, arrays, self.baseline))

    def raw(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        node = self.roots
        for _ in range(self.depth):
            node = self.children[2 * node + (x[self.feature[node]] <= self.threshold[node])]  # NaN goes right
        n_classes = self.baseline.size
        out: NDArray[np.float64] = self.baseline + self.value[node].reshape(-1, n_classes).sum(axis=0)
        return out


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

    def probabilities(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return softmax(self.trees.raw(x))

    def probabilities3(self, x: Sequence[float]) -> tuple[float, float, float]:
        """``probabilities`` as three floats, the gateway's hot path (``x``: every feature, in model order)."""
        quick = self.trees.quick
        if quick is not None:
            return softmax3(quick.raw(x))
        return softmax3(self.trees.raw(np.asarray(x, dtype=np.float64)).tolist())

    def probabilities_batch(self, xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([self.probabilities(row) for row in xs])

    def to_json(self) -> str:
        return json.dumps(self.doc, sort_keys=True, separators=(",", ":"))


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ModelFormatError(f"model: {message}")


def _int(value: Any, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, f"{what} must be an int")
    return int(value)


def _floats(value: Any, n: int, what: str) -> NDArray[np.float64]:
    ok = isinstance(value, list) and len(value) == n and all(isinstance(v, int | float) for v in value)
    _need(ok and all(math.isfinite(v) for v in value), f"{what} must be {n} finite numbers")
    return np.asarray(value, dtype=np.float64)


def _parse_text(text: Any) -> TextModel:
    _need(isinstance(text, dict) and set(text) == {"dim", "weights_f16", "bias"}, "bad 'text' section")
    dim = _int(text["dim"], "text.dim", 1, 1 << 22)
    weights = decode_array(text["weights_f16"], "float16", 3 * dim, "text.weights_f16").reshape(3, dim)
    return TextModel(dim, weights.astype(np.float32), _floats(text["bias"], 3, "text.bias"))


def _parse_trees(head: Any, n_features: int) -> Trees:
    keys = {"kind", "baseline", "n_trees", "n_nodes", "depth", "feature", "threshold", "left", "right", "value"}
    _need(isinstance(head, dict) and set(head) == keys and head.get("kind") == "trees", "bad 'head' section")
    n_trees = _int(head["n_trees"], "head.n_trees", 3, 100_000)
    n_nodes = _int(head["n_nodes"], "head.n_nodes", 1, 100_000)
    depth = _int(head["depth"], "head.depth", 0, 64)
    _need(n_trees % 3 == 0, "head.n_trees must be a multiple of 3")
    size = n_trees * n_nodes
    feature = decode_array(head["feature"], "int32", size, "head.feature").astype(np.int64)
    left = decode_array(head["left"], "int32", size, "head.left").astype(np.int64)
    right = decode_array(head["right"], "int32", size, "head.right").astype(np.int64)
    _need(bool(((feature >= 0) & (feature < n_features)).all()), "head.feature index out of range")
    tree_of = np.arange(size) // n_nodes
    for arr, what in ((left, "left"), (right, "right")):
        _need(bool(((arr >= 0) & (arr < size) & (arr // n_nodes == tree_of)).all()), f"head.{what} out of its tree")
    return Trees(
        baseline=_floats(head["baseline"], 3, "head.baseline"),
        n_trees=n_trees,
        n_nodes=n_nodes,
        depth=depth,
        feature=feature,
        threshold=decode_array(head["threshold"], "float64", size, "head.threshold"),
        left=left,
        right=right,
        value=decode_array(head["value"], "float64", size, "head.value"),
    )


def parse_model(raw: str | bytes | dict[str, Any], source: str = "model") -> ClassifierModel:
    """Validate a model document (checksum first, then every field); ``ModelFormatError`` says what is wrong."""
    try:
        doc = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{source}: not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{source}: not a wattgate classifier model")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{source}: format version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
    if doc.get("sha256") != checksum(doc):
        raise ModelFormatError(f"{source}: checksum mismatch: the model was altered or corrupted; refusing to load it")
    _need(set(doc) - {"sha256"} == _TOP_KEYS, f"unexpected fields {sorted(set(doc) ^ (_TOP_KEYS | {'sha256'}))}")
    names = doc["feature_names"]
    _need(
        isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
        "bad feature_names",
    )
    edges = doc["edges"]
    _need(isinstance(edges, dict) and set(edges) == {"output_short_max", "output_medium_max"}, "bad edges")
    short_max = _int(edges["output_short_max"], "edges.output_short_max", 1)
    medium_max = _int(edges["output_medium_max"], "edges.output_medium_max", short_max + 1)
    return ClassifierModel(
        doc=doc,
        version=_int(doc["version"], "version"),
        feature_names=tuple(names),
        output_short_max=short_max,
        output_medium_max=medium_max,
        text=_parse_text(doc["text"]),
        trees=_parse_trees(doc["head"], len(names)),
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
