"""The hashed n-gram text model (uni/bigrams of token ids -> three logits) and the array helpers of model documents.

Slots are ``(token_id * A) % dim`` for unigrams and ``((a * B + b) * A) % dim`` for bigrams (int64
arithmetic, wrap-around included), deduplicated; a text's logits are ``bias + sum(rows[slots]) /
sqrt(len(slots))``. The same slots are what an Observation may keep instead of the text
(``Observation.text_slots``), so adaptation can refit a text model without ever seeing the words.
"""

from __future__ import annotations

import array
import base64
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ModelFormatError

TokenIds = Sequence[int] | NDArray[np.uint32]  # a list, or tiktoken's array (``TokenCounter.ids``)
_HASH_A = 2654435761
_HASH_B = 1000003
# Up to this many token ids, slots and text logits are computed in plain Python: below ~20 ids that beats numpy's
# per-call cost on this project's VM (at 64 ids, the previous bound, plain Python took 4x numpy's time: 70 vs 18 us).
SHORT_TEXT_IDS = 20


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


def ngram_indices(ids: TokenIds, dim: int) -> NDArray[np.int64]:
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
    if dim & (dim - 1) == 0:
        h &= dim - 1  # the same residue as % for a power of two (two's complement), without a division
    else:
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

    def logits(self, ids: TokenIds) -> NDArray[np.float64]:
        idx = ngram_indices(ids, self.dim)
        if idx.size == 0:
            return self.bias.copy()
        out: NDArray[np.float64] = self.bias + self.rows[idx].sum(axis=0) / math.sqrt(idx.size)
        return out

    def slots(self, ids: TokenIds) -> Slots:
        """The distinct slots of ``ids``: a sorted list below ``SHORT_TEXT_IDS`` ids, else a sorted array."""
        if len(ids) > SHORT_TEXT_IDS:
            return ngram_indices(ids, self.dim)
        return ngram_slots(ids.tolist() if isinstance(ids, np.ndarray) else ids, self.dim)  # Python ints: no wrap

    def logits3(self, ids: Sequence[int]) -> tuple[float, float, float]:
        """``logits`` as three floats, the gateway's hot path: the same sums in the same order (so the
        same bits), in plain Python below ``SHORT_TEXT_IDS`` token ids, where numpy's call overhead
        would be most of the cost."""
        return self.logits_of(self.slots(ids))

    def logits_of(self, slots: Slots) -> tuple[float, float, float]:
        """The three logits of a text given its slots (from ``slots``, or decoded from an Observation)."""
        b0, b1, b2 = self.bias3
        if isinstance(slots, np.ndarray):
            if slots.size == 0:
                return (b0, b1, b2)
            # numpy sums the rows; the division and the bias are the same float operations in Python, one call less
            t0, t1, t2 = self.rows.take(slots, axis=0).sum(axis=0).tolist()
            r = math.sqrt(slots.size)
            return (b0 + t0 / r, b1 + t1 / r, b2 + t2 / r)
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


Slots = list[int] | NDArray[np.int64]


def need(cond: bool, message: str) -> None:
    if not cond:
        raise ModelFormatError(f"model: {message}")


def check_int(value: Any, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, f"{what} must be an int")
    return int(value)


def check_floats(value: Any, n: int, what: str) -> NDArray[np.float64]:
    ok = isinstance(value, list) and len(value) == n and all(isinstance(v, int | float) for v in value)
    need(ok and all(math.isfinite(v) for v in value), f"{what} must be {n} finite numbers")
    return np.asarray(value, dtype=np.float64)


def parse_text(text: Any, what: str = "text") -> TextModel:
    need(isinstance(text, dict) and set(text) == {"dim", "weights_f16", "bias"}, f"bad '{what}' section")
    dim = check_int(text["dim"], f"{what}.dim", 1, 1 << 22)
    weights = decode_array(text["weights_f16"], "float16", 3 * dim, f"{what}.weights_f16").reshape(3, dim)
    return TextModel(dim, weights.astype(np.float32), check_floats(text["bias"], 3, f"{what}.bias"))


def text_doc(text: TextModel) -> dict[str, Any]:
    return {"dim": text.dim, "weights_f16": encode_array(text.weights, "<f2"), "bias": [float(b) for b in text.bias]}
