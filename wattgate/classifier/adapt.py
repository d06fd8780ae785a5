"""Online adaptation: refit the tree head on base data + the deployment's observations, keep it only if it is better.

Observations carry the numeric features the gateway recorded (``Prediction.features``), never
text, so the hashed n-gram text model stays as shipped and only the head is refitted; its
``txt_*`` logits are among the recorded features. The most recent ``holdout_fraction`` of the
observations is held out (the future the new model must serve); the rest is weighted
``boost * 0.5 ** (age / half_life)`` against base rows of weight 1, where ``boost`` makes the
observations outweigh the base data (``min(max_boost, obs_share * n_base / n_fit)``). The
candidate replaces the current model only if its held-out log loss is lower by ``min_gain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.features import Sample, feature_vector
from wattgate.classifier.metrics import Scores, score
from wattgate.classifier.model import ClassifierModel
from wattgate.classifier.predictor import BASE_FEATURES_FILE, data_path
from wattgate.classifier.train import export_trees, fit_head, labels, with_head
from wattgate.profiles.classes import ClassEdges


@dataclass(frozen=True)
class AdaptSettings:
    holdout_fraction: float = 0.2
    half_life_s: float = 3 * 24 * 3600.0
    obs_share: float = 4.0
    max_boost: float = 100.0
    min_gain: float = 0.001  # log loss
    min_holdout: int = 20
    base_limit: int | None = 10_000  # base rows kept (a random subsample): fit in seconds; observations dominate


@dataclass(frozen=True)
class BaseData:
    x: NDArray[np.float64]
    output_tokens: NDArray[np.int64]


@dataclass(frozen=True)
class AdaptResult:
    accepted: bool
    reason: str
    candidate: ClassifierModel | None
    current: Scores
    new: Scores | None
    n_fit: int
    n_holdout: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "version": self.candidate.version if self.candidate else None,
            "observations_fit": self.n_fit,
            "observations_held_out": self.n_holdout,
            "current": self.current.to_dict(),
            "candidate": self.new.to_dict() if self.new else None,
        }


def load_base(model: ClassifierModel, path: Path | None = None) -> BaseData:
    """The shipped training features (no text); their names must be the model's."""
    path = path or data_path(BASE_FEATURES_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["feature_names"]]
            x, out = data["x"].astype(np.float64), data["output_tokens"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ClassifierError(f"cannot read base training features {path}: {exc}") from exc
    if tuple(names) != model.feature_names:
        raise ClassifierError(f"{path}: its features are not the model's; retrain the base model")
    return BaseData(x, out)


def matrix(samples: Sequence[Sample], names: Sequence[str]) -> NDArray[np.float64]:
    return np.array([feature_vector(s.features, names) for s in samples], dtype=np.float64).reshape(-1, len(names))


def evaluate(model: ClassifierModel, x: NDArray[np.float64], output_tokens: NDArray[Any], edges: ClassEdges) -> Scores:
    probs = model.probabilities_batch(x)
    return score(labels(np.asarray(output_tokens), edges), probs.argmax(axis=1), probs)


def adapt(
    model: ClassifierModel,
    base: BaseData,
    samples: Sequence[Sample],
    edges: ClassEdges,
    *,
    settings: AdaptSettings | None = None,
    version: int | None = None,
) -> AdaptResult:
    """Fit a candidate on base + observations and compare both models on the held-out observations."""
    st = settings or AdaptSettings()
    usable = sorted((s for s in samples if s.features), key=lambda s: s.ts)
    n_hold = round(len(usable) * st.holdout_fraction)
    fit, hold = usable[: len(usable) - n_hold], usable[len(usable) - n_hold :]
    names = model.feature_names
    hold_x, hold_out = matrix(hold, names), np.array([s.output_tokens for s in hold])
    current = evaluate(model, hold_x, hold_out, edges) if hold else score(np.zeros(0), np.zeros(0))
    if len(hold) < st.min_holdout or not fit:
        reason = f"too few observations with features ({len(usable)}): need {st.min_holdout} held out and some to fit"
        return AdaptResult(False, reason, None, current, None, len(fit), len(hold))
    bx, bout = base.x, base.output_tokens
    if st.base_limit is not None and len(bout) > st.base_limit:
        keep = np.random.default_rng(0).choice(len(bout), st.base_limit, replace=False)
        bx, bout = bx[keep], bout[keep]
    fx, fout = matrix(fit, names), np.array([s.output_tokens for s in fit])
    ages = np.array([fit[-1].ts - s.ts for s in fit])
    boost = min(st.max_boost, st.obs_share * len(bout) / len(fit))
    weights = np.concatenate([np.ones(len(bout)), boost * 0.5 ** (ages / st.half_life_s)])
    y = labels(np.concatenate([bout, fout]), edges)
    head = fit_head(np.vstack([bx, fx]), y, weights)
    new_version = version if version is not None else model.version + 1
    notes = {**model.doc.get("notes", {}), "adapted": {"observations": len(fit), "boost": round(boost, 2)}}
    candidate = with_head(model, export_trees(head), new_version, notes)
    new = evaluate(candidate, hold_x, hold_out, edges)
    assert current.log_loss is not None and new.log_loss is not None
    better = new.log_loss < current.log_loss - st.min_gain
    reason = (
        f"held-out log loss {current.log_loss:.4f} -> {new.log_loss:.4f}, "
        f"accuracy {current.accuracy:.3f} -> {new.accuracy:.3f}: {'better' if better else 'not better, kept current'}"
    )
    return AdaptResult(better, reason, candidate if better else None, current, new, len(fit), len(hold))
