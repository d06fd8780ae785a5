"""A served model's decision rule: per-class weights on its probabilities, chosen from its own observations.

The class a request is routed as is ``argmax_c p(c|x) · w_c``. With ``w = 1`` that is the plain argmax,
which maximises accuracy when the probabilities are calibrated, and for a served model whose answers
crowd into one class it almost never names the rare classes (high accuracy, low balanced accuracy).
Weighting each class by the inverse of its share maximises balanced accuracy instead, at a cost in
accuracy. Which trade is right depends on the served model, so adaptation learns it per model:

    maximise balanced accuracy subject to accuracy >= (plain argmax's accuracy) - ACCURACY_MARGIN

over log weights ``(log w_S, 0, log w_L)`` on a grid, on probabilities predicted *out of fold* for the
model's observations (``adapt.fit_profile``), so the rule is judged on requests the residual was not
fitted on. Ties go to the higher accuracy, then to the smaller weights. The plain argmax is always
allowed, so a model whose classes are balanced keeps it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

ACCURACY_MARGIN = 0.05  # accuracy given up at most for balanced accuracy (out of fold, on the observations)
GRID = np.round(np.arange(-3.0, 3.0001, 0.1), 2)  # log weights of S and of L, M's fixed at 0
FOLDS = 4  # contiguous blocks of the observations, in time order


def choose_decision(
    probs: NDArray[np.float64], y: NDArray[Any], margin: float = ACCURACY_MARGIN
) -> tuple[float, float, float]:
    """The log weights that maximise balanced accuracy on these rows, accuracy staying within ``margin`` of the
    plain argmax's (``probs``: out-of-fold probabilities, ``y``: true classes)."""
    y = np.asarray(y, dtype=np.int64)
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    counts = np.bincount(y, minlength=3).astype(np.float64)
    present = counts > 0
    if present.sum() < 2:
        return (0.0, 0.0, 0.0)
    inv = np.divide(1.0, counts, out=np.zeros(3), where=present) / present.sum()  # balanced-accuracy weight a row
    is_s, is_m, is_l = (y == 0), (y == 1), (y == 2)
    s_m = logp[:, 0] - logp[:, 1]  # S beats M once log w_S > -(this)
    l_m = logp[:, 2] - logp[:, 1]
    s_l = logp[:, 0] - logp[:, 2]
    n = len(y)
    base_acc = float((logp.argmax(axis=1) == y).mean())
    best: tuple[float, float, float] = (-1.0, -1.0, 0.0)
    choice = (0.0, 0.0)
    dl = GRID[:, None]  # (grid, 1) against rows (1, n)
    for ds in GRID:
        # np.argmax's order: S on ties with M or L, then M on ties with L
        pred_s = (s_m[None, :] + ds >= 0) & (s_l[None, :] + ds - dl >= 0)
        pred_l = ~pred_s & (l_m[None, :] + dl > 0)
        pred_m = ~pred_s & ~pred_l
        hits_s, hits_m, hits_l = (pred_s & is_s).sum(axis=1), (pred_m & is_m).sum(axis=1), (pred_l & is_l).sum(axis=1)
        acc = (hits_s + hits_m + hits_l) / n
        bal = hits_s * inv[0] + hits_m * inv[1] + hits_l * inv[2]
        for j in np.flatnonzero(acc >= base_acc - margin - 1e-12):
            key = (round(float(bal[j]), 9), round(float(acc[j]), 9), -abs(float(ds)) - abs(float(GRID[j])))
            if key > best:
                best, choice = key, (float(ds), float(GRID[j]))
    return (choice[0], 0.0, choice[1])


def folds(n: int, k: int = FOLDS) -> list[NDArray[np.int64]]:
    """``k`` contiguous blocks of ``range(n)`` (time order: each block is predicted by a fit on the others)."""
    return [b.astype(np.int64) for b in np.array_split(np.arange(n), k) if b.size]
