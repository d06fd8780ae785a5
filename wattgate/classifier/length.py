"""The output-length distribution: per output class, quantiles of the answers' token counts.

A prediction's distribution of output tokens is the mixture of the three classes' distributions
weighted by P(S), P(M), P(L); each class keeps ``N_QUANTILES`` mid-quantiles ((i + 0.5) / N) of the
token counts seen in it. The expected output tokens the planner forecasts load from are the mixture's
mean, capped by ``max_tokens`` (E[min(T, max_tokens)], taken over the quantiles). Fitted on the base
data and refitted per served model from its observations, shrunk towards the base quantiles while a
class has few of them (``PRIOR_WEIGHT`` pseudo-observations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ModelFormatError
from wattgate.profiles.classes import ClassEdges

N_QUANTILES = 16
PRIOR_WEIGHT = 20.0


@dataclass(frozen=True)
class LengthModel:
    quantiles: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]  # per class S/M/L, ascending
    means: tuple[float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s, m, l_ = (sum(q) / len(q) for q in self.quantiles)
        object.__setattr__(self, "means", (s, m, l_))

    def expected(self, probs: Sequence[float], max_tokens: int | None = None) -> float:
        """E[min(output tokens, max_tokens)] under the mixture (modelled)."""
        if max_tokens is None:
            a, b, c = self.means
            return probs[0] * a + probs[1] * b + probs[2] * c
        total = 0.0
        for p, qs in zip(probs, self.quantiles, strict=True):
            if p:
                total += p * sum(q if q < max_tokens else max_tokens for q in qs) / len(qs)
        return total

    def quantile(self, probs: Sequence[float], level: float) -> float:
        """The mixture's ``level`` quantile (e.g. 0.9: nine answers in ten are at most this long; modelled)."""
        points = sorted((q, p / len(qs)) for p, qs in zip(probs, self.quantiles, strict=True) for q in qs)
        acc = 0.0
        for q, w in points:
            acc += w
            if acc >= level - 1e-12:
                return q
        return points[-1][0]

    def to_doc(self) -> dict[str, Any]:
        return {"quantiles": [[round(v, 2) for v in q] for q in self.quantiles]}


def midpoints(edges: ClassEdges) -> LengthModel:
    """What wattgate assumed before it learnt lengths: class midpoints, L at twice the M edge."""
    s = edges.output_short_max / 2
    m = (edges.output_short_max + edges.output_medium_max) / 2
    return LengthModel(((s,) * N_QUANTILES, (m,) * N_QUANTILES, (2.0 * edges.output_medium_max,) * N_QUANTILES))


def parse_length(raw: Any, what: str) -> LengthModel:
    ok = isinstance(raw, dict) and set(raw) == {"quantiles"} and isinstance(raw["quantiles"], list)
    if not ok or len(raw["quantiles"]) != 3:
        raise ModelFormatError(f"model: {what} must be {{'quantiles': [S, M, L]}}")
    out = []
    for q in raw["quantiles"]:
        good = isinstance(q, list) and 1 <= len(q) <= 256 and all(isinstance(v, int | float) for v in q)
        if not good or not all(math.isfinite(v) and v >= 0 for v in q) or list(q) != sorted(q):
            raise ModelFormatError(f"model: {what} quantiles must be ascending finite non-negative numbers")
        out.append(tuple(float(v) for v in q))
    return LengthModel((out[0], out[1], out[2]))


def fit_length(
    output_tokens: NDArray[Any],
    labels: NDArray[np.int64],
    prior: LengthModel | None = None,
    weights: NDArray[np.float64] | None = None,
) -> LengthModel:
    """Per-class quantiles of ``output_tokens``, shrunk towards ``prior`` by ``PRIOR_WEIGHT`` pseudo-counts."""
    levels = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
    w_all = np.ones(len(output_tokens)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = []
    for c in range(3):
        rows = labels == c
        vals = np.asarray(output_tokens, dtype=np.float64)[rows]
        base = np.asarray(prior.quantiles[c]) if prior is not None else None
        if vals.size == 0:
            if base is None:
                raise ValueError("no outputs of a class and no prior to fall back on")
            out.append(tuple(base.tolist()))
            continue
        order = np.argsort(vals)
        vals, w = vals[order], w_all[rows][order]
        cum = (np.cumsum(w) - w / 2) / w.sum()
        q = np.interp(levels, cum, vals)
        if base is not None and base.size == N_QUANTILES:
            n = float(w.sum()) if weights is None else float(rows.sum())
            q = (n * q + PRIOR_WEIGHT * base) / (n + PRIOR_WEIGHT)
        out.append(tuple(float(v) for v in np.maximum.accumulate(q)))
    return LengthModel((out[0], out[1], out[2]))


def calibrate_means(
    model: LengthModel, probs: NDArray[np.float64], output_tokens: NDArray[Any], shrink: float = PRIOR_WEIGHT
) -> LengthModel:
    """Scale each class's quantiles so that ``sum_c p_c * mean_c`` fits the true tokens (non-negative least
    squares, shrunk towards the current means by ``shrink`` pseudo-rows a class): the expected tokens are
    then calibrated for the probabilities this predictor actually gives, even when they are not calibrated."""
    from scipy.optimize import nnls  # type: ignore[import-untyped]  # noqa: PLC0415  (training time only)

    prior = np.asarray(model.means)
    a = np.vstack([probs, np.sqrt(shrink) * np.eye(3)])
    b = np.concatenate([np.asarray(output_tokens, dtype=np.float64), np.sqrt(shrink) * prior])
    means, _ = nnls(a, b)
    factors = np.where(prior > 0, means / np.maximum(prior, 1e-9), 1.0)
    out = [tuple(float(v * f) for v in q) for q, f in zip(model.quantiles, factors, strict=True)]
    return LengthModel((out[0], out[1], out[2]))
