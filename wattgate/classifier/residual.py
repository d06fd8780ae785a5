"""Fitting a served model's residual (``served.py``): multinomial logistic regression, the shipped logits as offset.

Minimises ``sum_i w_i * cross_entropy(softmax(offset_i + T_i·Wt + F_i·Wf + b), y_i)
+ l2_text/2·|Wt|² + l2_feat/2·|Wf|² + L2_BIAS/2·|b|²`` with L-BFGS (scipy) and the exact gradient.
``T`` holds the hashed slots of each observation (rows scaled by 1/sqrt(slots), as the shipped text
model's), ``F`` the standardised, clipped engineered features. Only the slot columns that occur are
optimised (the others stay 0: their gradient is the penalty alone). The penalties are picked from a
small grid on the most recent quarter of the fit rows, then the residual is refitted on all of them.

Rows carry the caller's weights only (age): the fit is calibrated, and the trade between accuracy and
balanced accuracy is left to the served model's decision rule (``decision.py``). (An earlier version
weighted rows by ``class share ** -0.5``, one global constant for every served model.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, sparse  # type: ignore[import-untyped]

from wattgate.classifier.served import CLIP, Linear
from wattgate.classifier.textmodel import TextModel

L2_BIAS = 0.01
TEXT_GRID = (1.0, 4.0)
FEAT_GRID = (2.0, 20.0)
MAX_ITER = 200


@dataclass(frozen=True)
class Residual:
    text: TextModel | None
    linear: Linear
    bias: tuple[float, float, float]
    l2_text: float
    l2_feat: float


def slot_matrix(slot_lists: Sequence[Sequence[int] | None], dim: int) -> Any:
    """CSR (rows, dim) with 1/sqrt(n) at each distinct slot of a row; an empty row where no slots were kept."""
    indptr, cols, vals = [0], [], []
    for slots in slot_lists:
        s = np.unique(np.asarray(slots if slots is not None else [], dtype=np.int64))
        cols.append(s)
        vals.append(np.full(s.size, 1.0 / np.sqrt(max(1, s.size))))
        indptr.append(indptr[-1] + s.size)
    data = np.concatenate(vals) if vals else np.zeros(0)
    idx = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sparse.csr_matrix((data, idx, np.asarray(indptr)), shape=(len(slot_lists), dim))


def standardise(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    return np.clip((x - mean) / scale, -CLIP, CLIP), mean, scale


def _fit(  # noqa: PLR0917  (the terms of one objective)
    offset: NDArray[np.float64],
    t: Any,
    f: NDArray[np.float64],
    y: NDArray[np.int64],
    w: NDArray[np.float64],
    l2_text: float,
    l2_feat: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    n, nt, nf = len(y), t.shape[1], f.shape[1]
    onehot = np.zeros((n, 3))
    onehot[np.arange(n), y] = 1.0
    tt = t.T.tocsr()

    def unpack(p: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        return p[: 3 * nt].reshape(nt, 3), p[3 * nt : 3 * (nt + nf)].reshape(nf, 3), p[3 * (nt + nf) :]

    def loss(p: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        wt, wf, b = unpack(p)
        z = offset + t @ wt + f @ wf + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        value = -(w * (logp * onehot).sum(axis=1)).sum()
        value += 0.5 * (l2_text * (wt**2).sum() + l2_feat * (wf**2).sum() + L2_BIAS * (b**2).sum())
        g = (np.exp(logp) - onehot) * w[:, None]
        grad = np.concatenate(
            [(tt @ g + l2_text * wt).ravel(), (f.T @ g + l2_feat * wf).ravel(), g.sum(axis=0) + L2_BIAS * b]
        )
        return float(value), grad

    res = optimize.minimize(
        loss, np.zeros(3 * (nt + nf + 1)), jac=True, method="L-BFGS-B", options={"maxiter": MAX_ITER}
    )
    return unpack(res.x)


def _log_loss(offset: NDArray[np.float64], t: Any, f: NDArray[np.float64], y: NDArray[np.int64], params: Any) -> float:
    wt, wf, b = params
    z = offset + t @ wt + f @ wf + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_residual(  # noqa: PLR0917
    offset: NDArray[np.float64],
    slots: Sequence[Sequence[int] | None] | None,
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    weights: NDArray[np.float64],
    dim: int,
    feature_index: Sequence[int],
    *,
    penalties: tuple[float, float] | None = None,
) -> Residual:
    """The residual for rows in time order (``offset``: shipped logits; ``slots``: None when no row kept any).

    ``penalties``: ``(l2_text, l2_feat)`` as given, else picked on the latest quarter."""
    f, mean, scale = standardise(x[:, list(feature_index)])
    full = slot_matrix(slots, dim) if slots is not None else sparse.csr_matrix((len(y), dim))
    used = np.unique(full.indices)
    t = full[:, used]
    cut = int(len(y) * 0.75)
    grid = [(lt, lf) for lt in (TEXT_GRID if used.size else (1.0,)) for lf in FEAT_GRID]
    best, best_loss = penalties or grid[0], float("inf")
    if penalties is None and 20 <= cut < len(y) and len(set(y[:cut].tolist())) > 1:
        for lt, lf in grid:
            params = _fit(offset[:cut], t[:cut], f[:cut], y[:cut], weights[:cut], lt, lf)
            value = _log_loss(offset[cut:], t[cut:], f[cut:], y[cut:], params)
            if value < best_loss:
                best, best_loss = (lt, lf), value
    wt, wf, b = _fit(offset, t, f, y, weights, *best)
    text = None
    if used.size:
        dense = np.zeros((3, dim), dtype=np.float32)
        dense[:, used] = wt.T
        text = TextModel(dim, dense, np.zeros(3))
    linear = Linear(index=tuple(feature_index), mean=mean, scale=scale, weights=wf.T.copy())
    b0, b1, b2 = (float(v) for v in b)
    return Residual(text, linear, (b0, b1, b2), best[0], best[1])
