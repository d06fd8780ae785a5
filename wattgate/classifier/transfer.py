"""Transfer: a served model's own trees, learnt from the shipped training rows relabelled by its observations.

A few hundred observations of a served model hold too few of its rare classes to learn where they
are (a terse model's long answers: 20 in 600), but the 31,934 training rows that ship with the
package (``data/base_features.npz``: features and the training model's output tokens, no text) show
where long answers come from, if their lengths are turned into the served model's. Adaptation
learns that turning from the observations, as a *length shift*:

1. ``E[log tokens | x]`` of the training model: boosted regression trees on the base rows (once per
   retrain pass, shared by every served model);
2. the shift ``log(served tokens) - E[log tokens | x]`` of each observation, regressed on its
   standardised features (ridge, its strength by generalised cross-validation; the mean is not
   shrunk): how much longer or shorter this model answers, and for which requests (code, lists,
   long prompts, ...);
3. what is left, ``log(served tokens) - E[log tokens | x] - shift(x)``, is how widely this model's
   answers to similar requests spread; each base row keeps its rank in the training model's spread
   (the quantile of its own ``log tokens - E[log tokens | x]``) and takes the served model's value at
   that quantile (quantile matching of the residuals, conditional on the features through the mean
   and the shift): a terse model whose answers vary more than the training model's gets more long
   answers from the rows that were long for the training model, not none;
4. each base row's answer becomes ``exp(E[log tokens | x] + shift(x) + matched residual)``, labelled
   with the class edges, and the head's recipe (``train.HEAD_PARAMS``) is refitted on those rows: the
   served model's own trees (``ServedProfile.head``).

Chosen on the development set (held-out ShareGPT turns 1,200-2,400 with the bench's derived served
models; never the README's evaluation rows), by the log loss of the transferred trees alone on the
second half of each set: keeping each base row's own deviation (``tokens · exp(shift)``) gave a terse
model's trees almost no long answers (the training answers stop near 800 tokens, so 0.45x of them
is long only through the served model's own noise; log loss 0.746 against 0.619 matched; it was
ahead only on code/prose, 0.761 against 0.769), and a location-scale match (scale the deviation, add
Gaussian noise for the extra spread) did no better than quantile matching on any of the four sets
tried (terse 0.629, code/prose 0.789, verbose 0.677, ChatGPT's own 0.784 against 0.619, 0.769, 0.669, 0.781).

The residual (text delta, features, bias) is then fitted on the observations with these trees as the
offset, as without transfer. ``adapt.adapt_one`` chooses between the residual on the shipped trees,
the residual on these trees and these trees with a bias only by their out-of-fold log loss on the
observations, and the winner must still beat the current profile on the held-out latest part: where
the base rows do not help (a habit that lives in flags the base rows never set) the shipped-tree
candidate wins. Training time only (scikit-learn); the request path evaluates the trees like the shipped ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.model import ClassifierModel
from wattgate.classifier.predictor import BASE_FEATURES_FILE, data_path
from wattgate.classifier.residual import standardise
from wattgate.classifier.trees import Trees, parse_trees
from wattgate.profiles.classes import ClassEdges

REGRESSOR_PARAMS: dict[str, Any] = {"max_iter": 100, "max_depth": 4, "learning_rate": 0.1, "random_state": 0}
RIDGE_GRID = 10.0 ** np.arange(-1.0, 4.01, 0.25)  # penalties tried (GCV picks), on standardised features


def load_base(model: ClassifierModel, path: Path | None = None) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The shipped training rows' features and output tokens (no text)."""
    path = path or data_path(BASE_FEATURES_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["feature_names"]]
            x, out = data["x"].astype(np.float64), data["output_tokens"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ClassifierError(f"cannot read base training features {path}: {exc}") from exc
    if tuple(names) != model.feature_names:
        raise ClassifierError(f"{path}: its features are not the model's; retrain the base model")
    return x, out


def log_tokens(tokens: NDArray[Any]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.log(np.maximum(np.asarray(tokens, dtype=np.float64), 1.0))
    return out


@dataclass(frozen=True)
class BaseRows:
    """The training rows and the training model's expected log output tokens, for every served model's transfer."""

    x: NDArray[np.float64]
    tokens: NDArray[np.int64]
    mean_log: NDArray[np.float64]  # E[log tokens | x] at each base row
    regressor: Any  # fitted HistGradientBoostingRegressor of log tokens
    rank: NDArray[np.float64]  # each row's quantile in (0, 1) of log tokens - E[log tokens | x]

    @classmethod
    def fit(cls, model: ClassifierModel, path: Path | None = None) -> BaseRows:
        """Fitted once per process for a feature set and file (each retrain pass, or eval, reuses it)."""
        return _fit_base(model.feature_names, path or data_path(BASE_FEATURES_FILE), model)

    @classmethod
    def _fit(cls, model: ClassifierModel, path: Path) -> BaseRows:
        from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415  (training time only)

        x, tokens = load_base(model, path)
        reg = HistGradientBoostingRegressor(**REGRESSOR_PARAMS).fit(x, log_tokens(tokens))
        mean_log = reg.predict(x)
        order = np.argsort(log_tokens(tokens) - mean_log, kind="stable")
        rank = np.empty(len(order))
        rank[order] = (np.arange(len(order)) + 0.5) / len(order)
        return cls(x, tokens, mean_log, reg, rank)

    def expected_log(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = self.regressor.predict(x)
        return out


_BASE: dict[tuple[tuple[str, ...], Path], BaseRows] = {}


def _fit_base(names: tuple[str, ...], path: Path, model: ClassifierModel) -> BaseRows:
    key = (names, path)
    if key not in _BASE:
        _BASE.clear()  # one feature set at a time: the rows are ~11 MB
        _BASE[key] = BaseRows._fit(model, path)
    return _BASE[key]


@dataclass(frozen=True)
class LengthShift:
    """``log(served tokens) - E[log base tokens | x]`` as ``intercept + coef · clip((x - mean) / scale)``."""

    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    coef: NDArray[np.float64]
    intercept: float
    penalty: float

    def __call__(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        f = np.clip((x - self.mean) / self.scale, -5.0, 5.0)
        out: NDArray[np.float64] = f @ self.coef + self.intercept
        return out


def fit_shift(x: NDArray[np.float64], shift: NDArray[np.float64], weights: NDArray[np.float64]) -> LengthShift:
    """Weighted ridge of ``shift`` on the standardised features, unpenalised intercept, penalty by GCV."""
    f, mean, scale = standardise(x)
    w = weights / weights.sum()
    mu_f, mu_r = w @ f, float(w @ shift)
    sw = np.sqrt(w * len(w))[:, None]
    fc, rc = (f - mu_f) * sw, (shift - mu_r) * sw[:, 0]
    u, s, vt = np.linalg.svd(fc, full_matrices=False)
    ur = u.T @ rc
    n = len(rc)
    best: tuple[float, float, NDArray[np.float64]] | None = None
    for lam in RIDGE_GRID:
        d = s / (s**2 + lam)
        coef = vt.T @ (d * ur)
        dof = float((s**2 / (s**2 + lam)).sum()) + 1.0  # + the intercept
        gcv = float(((rc - fc @ coef) ** 2).mean()) / max(1e-9, 1.0 - dof / n) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, float(lam), coef)
    assert best is not None
    _, lam, coef = best
    return LengthShift(mean, scale, coef, mu_r - float(mu_f @ coef), lam)


def relabelled(
    base: BaseRows, x: NDArray[np.float64], tokens: NDArray[Any], weights: NDArray[np.float64]
) -> tuple[NDArray[np.float64], LengthShift]:
    """The base rows' answers as the served model (observations ``x``, ``tokens``) would have given them."""
    deviation = log_tokens(tokens) - base.expected_log(x)
    shift = fit_shift(x, deviation, weights)
    spread = deviation - shift(x)
    order = np.argsort(spread, kind="stable")
    cum = np.cumsum(weights[order])
    levels = (cum - weights[order] / 2) / cum[-1]  # weighted mid-quantile of each observation's residual
    matched = np.interp(base.rank, levels, spread[order])
    out: NDArray[np.float64] = np.exp(base.mean_log + shift(base.x) + matched)
    return out, shift


def transfer_head(
    base: BaseRows,
    x: NDArray[np.float64],
    tokens: NDArray[Any],
    weights: NDArray[np.float64],
    edges: ClassEdges,
) -> Trees:
    """The served model's trees: the head's recipe refitted on the relabelled base rows."""
    from wattgate.classifier.train import export_trees, fit_head, labels  # noqa: PLC0415  (scikit-learn)

    answers, _ = relabelled(base, x, tokens, weights)
    hgb = fit_head(base.x, labels(answers, edges))
    return parse_trees(export_trees(hgb), base.x.shape[1], "transferred head")
