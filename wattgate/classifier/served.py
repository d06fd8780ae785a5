"""What the classifier learnt of one served model: a residual on the shipped model's logits, and its answer lengths.

The shipped model (text model + trees) stays as trained. For each served model with enough
observations, adaptation fits a multinomial logistic *residual* whose input is the shipped model's
logits as a fixed offset:

    logits = trees(features) + text_delta(slots) + W · clip((features - mean) / scale) + bias

``text_delta`` is a hashed n-gram model over the same slots as the shipped text model (learnt from
the slots that observations keep, never from text), the linear part refits the engineered features
(standardised, clipped at ±``CLIP`` to bound what one odd request can do) and ``bias`` the class
priors. All three are shrunk towards zero (L2), so with few observations the profile stays close to
the shipped model. ``length`` is the served model's own output-length distribution per class.

``decision`` (format 3) is the served model's decision rule: log weights ``log w_c`` added to the
logits, so the class the router reads is ``argmax p(c|x) · w_c``. Adaptation picks them from the model's
own observations, out of fold (``decision.py``); the residual itself stays a calibrated fit. Format-2
profiles have none (all zero: the plain argmax).

``head`` (format 4) is the served model's own boosted trees, fitted by transfer (``transfer.py``): the
shipped training rows relabelled by the length shift learnt from this model's observations. When set,
its logits replace the shipped trees' (the residual is added to them, fitted with them as offset); the
request path evaluates them the same way. Format-3 profiles have none (the shipped trees).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.length import LengthModel, parse_length
from wattgate.classifier.textmodel import Slots, TextModel, check_floats, check_int, need, parse_text, text_doc
from wattgate.classifier.trees import Trees, parse_trees, trees_doc

CLIP = 5.0
MAX_DECISION = 10.0  # |log weight|: beyond it one class would never (or always) be chosen
_KEYS = {"observations", "text_delta", "features", "bias", "length"}
_KEYS_3 = _KEYS | {"decision"}
_KEYS_4 = _KEYS_3 | {"head"}
NO_DECISION = (0.0, 0.0, 0.0)


def _picker(index: tuple[int, ...]) -> Callable[[Sequence[float]], Sequence[float]]:
    """``x -> tuple(x[i] for i in index)``, in one C call where it can (itemgetter of one index gives the item)."""
    if len(index) > 1:
        return operator.itemgetter(*index)
    return lambda x: tuple(x[i] for i in index)


@dataclass(frozen=True)
class Linear:
    """The residual's linear part over engineered features (by index into the model's feature vector)."""

    index: tuple[int, ...]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    weights: NDArray[np.float64]  # (3, len(index))
    lo: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    hi: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    w_scaled: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    offset: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    pick: Callable[[Sequence[float]], Sequence[float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pick", _picker(self.index))
        # W · (x - mean) / scale == (W / scale) · x - W · mean / scale, with x clipped to mean ± CLIP · scale
        object.__setattr__(self, "lo", self.mean - CLIP * self.scale)
        object.__setattr__(self, "hi", self.mean + CLIP * self.scale)
        w_scaled = self.weights / self.scale
        object.__setattr__(self, "w_scaled", w_scaled)
        object.__setattr__(self, "offset", -(w_scaled @ self.mean))

    def logits(self, x: Sequence[float]) -> NDArray[np.float64]:
        # maximum then minimum is np.clip's result (NaN stays NaN) without its Python-level wrapper
        v = np.minimum(np.maximum(np.array(self.pick(x), dtype=np.float64), self.lo), self.hi)
        out: NDArray[np.float64] = self.w_scaled @ v + self.offset
        return out


@dataclass(frozen=True)
class ServedProfile:
    name: str
    observations: int
    text_delta: TextModel | None  # None: fitted without text slots (the gateway kept none)
    linear: Linear
    bias: tuple[float, float, float]
    length: LengthModel
    feature_names: tuple[str, ...]  # the model's, to write the document back
    decision: tuple[float, float, float] = NO_DECISION  # log decision weights, added to the logits
    head: Trees | None = None  # the transferred trees, in place of the shipped ones; None: the shipped trees
    _shift: tuple[float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        (b0, b1, b2), (d0, d1, d2) = self.bias, self.decision
        object.__setattr__(self, "_shift", (b0 + d0, b1 + d1, b2 + d2))

    def residual(self, slots: Slots, x: Sequence[float]) -> tuple[float, float, float]:
        """The three logits added to the shipped model's for one request (the decision weights included)."""
        r0, r1, r2 = self.linear.logits(x).tolist()
        b0, b1, b2 = self._shift
        if self.text_delta is not None:
            t0, t1, t2 = self.text_delta.logits_of(slots)
            return (b0 + r0 + t0, b1 + r1 + t1, b2 + r2 + t2)
        return (b0 + r0, b1 + r1, b2 + r2)

    def to_doc(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "text_delta": text_doc(self.text_delta) if self.text_delta is not None else None,
            "features": {
                "names": [self.feature_names[i] for i in self.linear.index],
                "mean": self.linear.mean.tolist(),
                "scale": self.linear.scale.tolist(),
                "weights": self.linear.weights.tolist(),
            },
            "bias": list(self.bias),
            "length": self.length.to_doc(),
            "decision": list(self.decision),
            "head": trees_doc(self.head) if self.head is not None else None,
        }


def parse_served(name: str, raw: Any, feature_names: Sequence[str], text_dim: int, fmt: int = 4) -> ServedProfile:
    """A profile of a format-``fmt`` document (2: without ``decision``, read as the plain argmax; 2 and 3:
    without ``head``, read as the shipped trees)."""
    what = f"served[{name!r}]"
    keys = {2: _KEYS, 3: _KEYS_3}.get(fmt, _KEYS_4)
    need(isinstance(raw, dict) and set(raw) == keys, f"{what}: fields must be {sorted(keys)}")
    delta = None if raw["text_delta"] is None else parse_text(raw["text_delta"], f"{what}.text_delta")
    need(delta is None or delta.dim == text_dim, f"{what}.text_delta must have the text model's dim")
    feats = raw["features"]
    need(isinstance(feats, dict) and set(feats) == {"names", "mean", "scale", "weights"}, f"{what}.features")
    names = feats["names"]
    need(isinstance(names, list) and all(n in feature_names for n in names), f"{what}: unknown feature names")
    need(len(set(names)) == len(names), f"{what}: repeated feature names")
    n = len(names)
    scale = check_floats(feats["scale"], n, f"{what}.features.scale")
    need(bool((scale > 0).all()), f"{what}.features.scale must be positive")
    rows = feats["weights"]
    need(isinstance(rows, list) and len(rows) == 3, f"{what}.features.weights must be 3 rows")
    weights = np.vstack([check_floats(r, n, f"{what}.features.weights") for r in rows]).reshape(3, n)
    linear = Linear(
        index=tuple(feature_names.index(f) for f in names),
        mean=check_floats(feats["mean"], n, f"{what}.features.mean"),
        scale=scale,
        weights=weights,
    )
    b0, b1, b2 = check_floats(raw["bias"], 3, f"{what}.bias").tolist()
    d0, d1, d2 = check_floats(raw["decision"], 3, f"{what}.decision").tolist() if fmt != 2 else NO_DECISION
    need(max(abs(d0), abs(d1), abs(d2)) <= MAX_DECISION, f"{what}.decision: log weights beyond ±{MAX_DECISION}")
    head = raw.get("head")
    return ServedProfile(
        name=name,
        observations=check_int(raw["observations"], f"{what}.observations"),
        text_delta=delta,
        linear=linear,
        bias=(b0, b1, b2),
        length=parse_length(raw["length"], f"{what}.length"),
        feature_names=tuple(feature_names),
        decision=(d0, d1, d2),
        head=None if head is None else parse_trees(head, len(feature_names), f"{what}.head"),
    )


def softmax_add(base: Sequence[float], extra: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = base[0] + extra[0], base[1] + extra[1], base[2] + extra[2]
    top = max(a, b, c)
    ea, eb, ec = math.exp(a - top), math.exp(b - top), math.exp(c - top)
    total = ea + eb + ec
    return (ea / total, eb / total, ec / total)
