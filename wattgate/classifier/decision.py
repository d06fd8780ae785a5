"""A served model's decision rule: per-class weights on its probabilities, chosen from its own observations.

The class a request is routed as is ``argmax_c p(c|x) · w_c``. With calibrated probabilities, ``w = 1``
(the plain argmax) maximises accuracy, and ``w_c = 1 / prior_c`` (the served model's class shares)
maximises balanced accuracy; for a served model whose answers crowd into one class the first almost
never names its rare classes, the second gives up much accuracy for them. Which trade is right depends
on the served model, so adaptation learns it per model, on the one-parameter path between the two:

    w_c = prior_c ** -alpha,  alpha in [0, 1]: the largest balanced accuracy with
    accuracy >= (the plain argmax's accuracy) - ACCURACY_MARGIN

on probabilities predicted *out of fold* for the model's observations (``adapt.fit_profile``), so the
rule is judged on requests the residual was not fitted on. Ties go to the smaller ``alpha``; ``alpha =
0`` is always allowed, so a model whose classes are balanced keeps the plain argmax. One parameter
rather than a free weight per class: on a development set (held-out ShareGPT turns 1,200-2,400 with the
bench's derived served models, never the README's evaluation rows) a grid over two free log weights
chose alike and was noisier. ``ACCURACY_MARGIN`` was set on that development set too: 0.05 is where the
gain in balanced accuracy stopped growing on the verbose and terse models.

Accuracy, balanced accuracy and the prior are *expected* ones under those calibrated probabilities
(``expected_scores``: each row counts as ``p(c|x)`` of a request of class c), not counts of the observed
labels. Balanced accuracy averages the recall of each class, and a rare class's recall counted from its
few observed rows is mostly noise: a terse served model's 600 observations hold ~20 long answers, so one
long answer more or less named L moves the count by 1.7 points of balanced accuracy, and the rule chosen
on them jumped between almost never and very often naming L. The expected recall of L sums ``p(L|x)``
over all 600 rows instead (each row's chance of being long, out of fold), which is what the residual's
log loss calibrated them for. On the development set this moved the terse model from 0.496 / 0.695 to
0.555 / 0.658 (balanced accuracy / accuracy on its scored half), left code/prose as it was (0.604 / 0.590 ->
0.603 / 0.588) and traded verbose's accuracy for a little balanced accuracy (0.595 / 0.708 -> 0.604 /
0.660). On the evaluation sets (README) it lifted balanced accuracy on three of five and cost the terse
model 7 points of accuracy for nothing: there no per-class weights reach 0.55 balanced accuracy at
accuracy >= 0.60 on its probabilities (the long answers of its scored half are not where they put L).
Choosing the rule instead on the transferred trees' relabelled
training rows (31,934 rows, ~1,000 of them long for the terse model) did worse on the development set
(0.515 / 0.673 with their labels, 0.537 / 0.668 expected): those rows are the training model's prompts,
not the served model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

ACCURACY_MARGIN = 0.05  # accuracy given up at most for balanced accuracy (out of fold, on the observations)
ALPHAS = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # 0: plain argmax (accuracy), 1: divide by the prior (balanced)
FOLDS = 4  # contiguous blocks of the observations, in time order


def _scores(
    logp: NDArray[np.float64], d: NDArray[np.float64], y: NDArray[np.int64], present: list[int]
) -> tuple[float, float]:
    """Accuracy and balanced accuracy (over the ``present`` classes) of ``argmax(logp + d)`` against ``y``."""
    pred = (logp + d).argmax(axis=1)
    return float((pred == y).mean()), float(np.mean([(pred[y == c] == c).mean() for c in present]))


def expected_scores(
    probs: NDArray[np.float64], d: NDArray[np.float64], present: list[int] | None = None
) -> tuple[float, float]:
    """Accuracy and balanced accuracy (over the ``present`` classes, default all three) of
    ``argmax(log probs + d)`` expected when each row's class is drawn from its (calibrated) ``probs``: the soft
    confusion matrix ``sum_x p(c|x) [decided(x) = k]``."""
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    decided = (logp + d).argmax(axis=1)
    hit = probs[np.arange(len(probs)), decided]  # p(decided class | x)
    recall = np.bincount(decided, weights=hit, minlength=3) / np.maximum(probs.sum(axis=0), 1e-12)
    return float(hit.mean()), float(recall[present if present is not None else [0, 1, 2]].mean())


def choose_decision(
    probs: NDArray[np.float64], y: NDArray[Any], margin: float = ACCURACY_MARGIN
) -> tuple[float, float, float]:
    """Log weights ``-alpha · log prior`` (M's at 0) with the largest expected balanced accuracy on these rows,
    expected accuracy within ``margin`` of the plain argmax's (``probs``: out-of-fold calibrated probabilities,
    their mean the prior; ``y``: true classes, only to see which classes were observed)."""
    y = np.asarray(y, dtype=np.int64)
    present = sorted({int(c) for c in y})  # balanced accuracy over the classes this model was seen to answer
    if len(present) < 2:
        return (0.0, 0.0, 0.0)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    logprior = np.log(probs.mean(axis=0))
    base, _ = expected_scores(probs, np.zeros(3))
    best, choice = -1.0, (0.0, 0.0, 0.0)
    for alpha in ALPHAS:
        d = -alpha * (logprior - logprior[1])
        acc, bal = expected_scores(probs, d, present)
        if acc >= base - margin - 1e-12 and bal > best + 1e-12:
            best, choice = bal, (float(d[0]), 0.0, float(d[2]))
    return choice


def folds(n: int, k: int = FOLDS) -> list[NDArray[np.int64]]:
    """``k`` contiguous blocks of ``range(n)`` (time order: each block is predicted by a fit on the others)."""
    return [b.astype(np.int64) for b in np.array_split(np.arange(n), k) if b.size]


def ceiling(
    probs: NDArray[np.float64], y: NDArray[Any], min_accuracy: float, span: float = 4.0, step: float = 0.1
) -> tuple[float, float, tuple[float, float, float]] | None:
    """The best any per-class weights could do on these rows: the largest balanced accuracy of
    ``argmax log p + d`` over log weights ``d = (d_S, 0, d_L)`` in ``[-span, span]``, accuracy at least
    ``min_accuracy``; ``(balanced, accuracy, d)``, None when no weights reach that accuracy. Chosen on the very
    rows it scores (an oracle), so it bounds every decision rule over these probabilities; a diagnostic, never
    a rule the gateway uses."""
    y = np.asarray(y, dtype=np.int64)
    present = [c for c in range(3) if (y == c).any()]
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    best: tuple[float, float, tuple[float, float, float]] | None = None
    for d0 in grid:
        for d2 in grid:
            acc, bal = _scores(logp, np.array([d0, 0.0, d2]), y, present)
            if acc < min_accuracy - 1e-12:
                continue
            if best is None or bal > best[0] + 1e-12:
                best = (bal, acc, (float(d0), 0.0, float(d2)))
    return best
