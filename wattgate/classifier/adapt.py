"""Online adaptation: learn each served model's habits from its observations; keep what predicts its future better.

Observations are grouped by the served model that answered (``Observation.model``). For each model
with at least ``min_observations``, the most recent ``holdout_fraction`` is held out (the future the
new profile must serve) and a ``ServedProfile`` is fitted on the rest: a residual on the shipped
model's logits over the observations' text slots and engineered features (``residual.py``), and the
model's own output-length quantiles per class (``length.py``), and its decision rule: per-class weights
on the probabilities, chosen on out-of-fold predictions of its observations (``decision.py``). Rows
are weighted ``0.5 ** (age / half_life)``. The profile replaces the model's current one (or none: the shipped
model alone) only if its held-out log loss is lower by ``min_gain``; it is then refitted on all of
that model's observations. The text model and trees themselves are never refitted: whatever was
learnt of one served model never leaks into another's predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wattgate.classifier.decision import ACCURACY_MARGIN, choose_decision, folds
from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.features import Sample, feature_vector
from wattgate.classifier.length import calibrate_means, fit_length
from wattgate.classifier.metrics import Scores, log_loss, score
from wattgate.classifier.model import ClassifierModel
from wattgate.classifier.residual import Residual, fit_residual, slot_matrix
from wattgate.classifier.served import ServedProfile
from wattgate.classifier.train import labels, with_served
from wattgate.classifier.transfer import BaseRows, transfer_head
from wattgate.classifier.trees import Trees
from wattgate.profiles.classes import ClassEdges


@dataclass(frozen=True)
class AdaptSettings:
    holdout_fraction: float = 0.2
    half_life_s: float = 3 * 24 * 3600.0
    min_gain: float = 0.001  # log loss
    min_holdout: int = 20
    min_observations: int = 100  # per served model
    max_models: int = 32  # served models kept in one document (the most observed)
    use_text_slots: bool = True  # False: fit the residual on the engineered features only
    decision_margin: float = ACCURACY_MARGIN  # accuracy the decision rule may give up for balanced accuracy
    transfer: bool = True  # also try trees transferred from the shipped training rows (``transfer.py``)


@dataclass(frozen=True)
class ModelAdaptation:
    """The outcome for one served model."""

    name: str
    accepted: bool
    reason: str
    current: Scores
    new: Scores | None
    n_fit: int
    n_holdout: int
    text_slots: bool  # whether the candidate learnt from text slots
    kind: str = "residual"  # which candidate won (or was best): see ``CANDIDATES``

    def to_dict(self) -> dict[str, Any]:
        return {
            "served_model": self.name,
            "accepted": self.accepted,
            "reason": self.reason,
            "observations_fit": self.n_fit,
            "observations_held_out": self.n_holdout,
            "text_slots": self.text_slots,
            "candidate_kind": self.kind,
            "current": self.current.to_dict(),
            "candidate": self.new.to_dict() if self.new else None,
        }


@dataclass(frozen=True)
class AdaptResult:
    candidate: ClassifierModel | None  # the new document when any served model's profile was accepted
    models: list[ModelAdaptation] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # served model -> observations, too few to adapt

    @property
    def accepted(self) -> bool:
        return self.candidate is not None

    @property
    def reason(self) -> str:
        lines = [f"{m.name}: {m.reason}" for m in self.models]
        lines += [f"{name}: too few observations ({n})" for name, n in sorted(self.skipped.items())]
        return "\n".join(lines) or "no observations with features"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "version": self.candidate.version if self.candidate else None,
            "models": [m.to_dict() for m in self.models],
            "too_few": self.skipped,
        }


def matrix(samples: Sequence[Sample], names: Sequence[str]) -> NDArray[np.float64]:
    return np.array([feature_vector(s.features, names) for s in samples], dtype=np.float64).reshape(-1, len(names))


def batch_probabilities(
    model: ClassifierModel,
    profile: ServedProfile | None,
    x: NDArray[np.float64],
    slots: Sequence[list[int] | None],
    *,
    decided: bool = True,
) -> NDArray[np.float64]:
    """What the predictor gives for these rows (before any max_tokens cap), all at once; ``decided=False``:
    without the profile's decision weights (the residual's calibrated probabilities)."""
    z = (profile.head if profile is not None and profile.head is not None else model.trees).raw_batch(x)
    if profile is not None:
        lin = profile.linear
        shift = np.asarray(profile.bias) + (np.asarray(profile.decision) if decided else 0.0)
        z = z + np.clip(x[:, list(lin.index)], lin.lo, lin.hi) @ lin.w_scaled.T + lin.offset + shift
        if profile.text_delta is not None:
            z = z + slot_matrix(slots, profile.text_delta.dim) @ profile.text_delta.weights.T.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def _scores(model: ClassifierModel, profile: ServedProfile | None, rows: list[Sample], edges: ClassEdges) -> Scores:
    """Classes as the predictor decides them; log loss of the calibrated probabilities (no decision weights)."""
    x, slots = matrix(rows, model.feature_names), [s.slots for s in rows]
    decided = batch_probabilities(model, profile, x, slots).argmax(axis=1)
    calibrated = batch_probabilities(model, profile, x, slots, decided=False)
    return score(labels(np.array([s.output_tokens for s in rows]), edges), decided, calibrated)


def _profile(model: ClassifierModel, name: str, n: int, res: Residual, head: Trees | None = None) -> ServedProfile:
    return ServedProfile(name, n, res.text, res.linear, res.bias, model.length, model.feature_names, head=head)


def _age_weights(rows: list[Sample], st: AdaptSettings) -> NDArray[np.float64]:
    ages = np.array([rows[-1].ts - s.ts for s in rows])
    out: NDArray[np.float64] = 0.5 ** (ages / st.half_life_s)
    return out


def _residual(
    model: ClassifierModel,
    rows: list[Sample],
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    weights: NDArray[np.float64],
    *,
    st: AdaptSettings,
    head: Trees | None,
    penalties: tuple[float, float] | None,
) -> Residual:
    keep = st.use_text_slots and any(s.slots for s in rows)
    slots = [s.slots for s in rows] if keep else None
    offset = (head or model.trees).raw_batch(x)
    index = range(len(model.feature_names))
    return fit_residual(offset, slots, x, y, weights, model.text.dim, index, penalties=penalties)


def out_of_fold(
    model: ClassifierModel,
    name: str,
    rows: list[Sample],
    edges: ClassEdges,
    st: AdaptSettings,
    *,
    penalties: tuple[float, float],
    heads: Sequence[Trees | None],
) -> NDArray[np.float64]:
    """Calibrated probabilities of each block of ``rows`` (``decision.folds``, time order) by a residual fitted on
    the other blocks with these penalties, on ``heads[k]`` for block k (trees fitted without it, or the shipped)."""
    x = matrix(rows, model.feature_names)
    y = labels(np.array([s.output_tokens for s in rows]), edges)
    weights = _age_weights(rows, st)
    oof = np.zeros((len(rows), 3))
    for block, head in zip(folds(len(rows)), heads, strict=True):
        rest = np.setdiff1d(np.arange(len(rows)), block)
        part = _residual(
            model, [rows[i] for i in rest], x[rest], y[rest], weights[rest], st=st, head=head, penalties=penalties
        )
        profile = _profile(model, name, len(rest), part, head)
        oof[block] = batch_probabilities(model, profile, x[block], [rows[i].slots for i in block], decided=False)
    return oof


def fit_profile(
    model: ClassifierModel,
    name: str,
    rows: list[Sample],
    edges: ClassEdges,
    st: AdaptSettings,
    *,
    penalties: tuple[float, float] | None = None,
    head: Trees | None = None,
    decision: tuple[float, float, float] | None = None,
) -> tuple[ServedProfile, tuple[float, float]]:
    """The profile and the L2 penalties it was fitted with (``penalties``: use these rather than pick them;
    ``head``: the served model's own trees, the residual's offset, else the shipped trees; ``decision``: these
    decision weights, else chosen on out-of-fold probabilities of ``rows`` on the same trees)."""
    x = matrix(rows, model.feature_names)
    y = labels(np.array([s.output_tokens for s in rows]), edges)
    res = _residual(model, rows, x, y, _age_weights(rows, st), st=st, head=head, penalties=penalties)
    chosen = (res.l2_text, res.l2_feat)
    if decision is None:
        oof = out_of_fold(model, name, rows, edges, st, penalties=chosen, heads=[head] * len(folds(len(rows))))
        decision = choose_decision(oof, y, st.decision_margin)
    tokens = np.array([s.output_tokens for s in rows])
    length = fit_length(tokens, y, prior=model.length)
    profile = replace(_profile(model, name, len(rows), res, head), length=length, decision=decision)
    probs = batch_probabilities(model, profile, x, [s.slots for s in rows])
    return replace(profile, length=calibrate_means(length, probs, tokens)), chosen


@dataclass(frozen=True)
class Candidate:
    """One way to fit a profile: which trees the residual sits on, and which penalties it may pick."""

    kind: str
    transfer: bool  # trees transferred from the base rows (else the shipped trees)
    penalties: tuple[float, float] | None  # None: picked on the latest quarter


FROZEN = (1e6, 1e6)  # residual penalties that keep only its class bias
CANDIDATES = (
    Candidate("residual", transfer=False, penalties=None),
    Candidate("transfer + residual", transfer=True, penalties=None),
    Candidate("transfer + bias", transfer=True, penalties=FROZEN),
)


def _head(
    model: ClassifierModel, rows: list[Sample], edges: ClassEdges, st: AdaptSettings, base: BaseRows | None
) -> Trees | None:
    """The served model's trees transferred from the base rows; None without base rows, or when the relabelled
    rows miss a class (nothing to transfer)."""
    if base is None:
        return None
    x, tokens = matrix(rows, model.feature_names), np.array([s.output_tokens for s in rows])
    try:
        return transfer_head(base, x, tokens, _age_weights(rows, st), edges)
    except ClassifierError:
        return None


def adapt_one(
    model: ClassifierModel,
    name: str,
    rows: list[Sample],
    edges: ClassEdges,
    st: AdaptSettings,
    *,
    base: BaseRows | None = None,
) -> tuple[ModelAdaptation, ServedProfile | None]:
    """Hold out the latest ``holdout_fraction`` of ``rows``; on the rest, pick the candidate whose out-of-fold
    probabilities (the residual refitted without each block) have the lowest log loss, and its decision rule
    from them; keep it if it beats the current profile on the held-out rows, refitted on all rows."""
    n_hold = round(len(rows) * st.holdout_fraction)
    fit, hold = rows[: len(rows) - n_hold], rows[len(rows) - n_hold :]
    current_profile = model.served.get(name)
    current = _scores(model, current_profile, hold, edges)
    keep = st.use_text_slots and any(s.slots for s in rows)
    if len(hold) < st.min_holdout or len(fit) < st.min_holdout:
        return ModelAdaptation(name, False, "too few observations to hold out", current, None, len(fit), 0, keep), None
    x, weights = matrix(fit, model.feature_names), _age_weights(fit, st)
    y = labels(np.array([s.output_tokens for s in fit]), edges)
    blocks = folds(len(fit))
    # the trees are transferred once from all fit rows, not per block: the observations reach them only through
    # the length shift (a ridge over the features) and the residuals' quantiles, too little to leak much
    head = _head(model, fit, edges, st, base)
    tried = []
    for cand in CANDIDATES:
        if cand.transfer and head is None:
            continue
        trees = head if cand.transfer else None
        res = _residual(model, fit, x, y, weights, st=st, head=trees, penalties=cand.penalties)
        penalties = (res.l2_text, res.l2_feat)
        oof = out_of_fold(model, name, fit, edges, st, penalties=penalties, heads=[trees] * len(blocks))
        tried.append((cand, trees, penalties, oof, log_loss(y, oof)))
    cand, trees, penalties, oof, _ = min(tried, key=lambda t: t[4])
    decision = choose_decision(oof, y, st.decision_margin)
    candidate, _ = fit_profile(model, name, fit, edges, st, penalties=penalties, head=trees, decision=decision)
    new = _scores(model, candidate, hold, edges)
    assert current.log_loss is not None and new.log_loss is not None
    better = new.log_loss < current.log_loss - st.min_gain
    others = ", ".join(f"{c.kind} {ll:.4f}" for c, _, _, _, ll in tried)
    reason = (
        f"{cand.kind} (out-of-fold log loss: {others}); held-out log loss {current.log_loss:.4f} -> "
        f"{new.log_loss:.4f}, accuracy {current.accuracy:.3f} -> {new.accuracy:.3f}, balanced "
        f"{current.balanced_accuracy:.3f} -> {new.balanced_accuracy:.3f} (decision weights "
        f"S x{math.exp(candidate.decision[0]):.2f}, L x{math.exp(candidate.decision[2]):.2f}): "
    ) + ("better, refitted on all" if better else "not better, kept current")
    outcome = ModelAdaptation(name, better, reason, current, new, len(fit), len(hold), keep, cand.kind)
    if not better:
        return outcome, None
    # refitted on all with the penalties picked here (trees transferred again); the decision rule chosen again
    final_head = (_head(model, rows, edges, st, base) or trees) if cand.transfer else None
    return outcome, fit_profile(model, name, rows, edges, st, penalties=penalties, head=final_head)[0]


def adapt(
    model: ClassifierModel,
    samples: Sequence[Sample],
    edges: ClassEdges,
    *,
    settings: AdaptSettings | None = None,
    version: int | None = None,
) -> AdaptResult:
    """Fit and judge a profile per served model; the candidate document holds the accepted ones."""
    st = settings or AdaptSettings()
    usable = sorted((s for s in samples if s.features), key=lambda s: s.ts)
    by_model: dict[str, list[Sample]] = {}
    for s in usable:
        by_model.setdefault(s.model, []).append(s)
    ranked = sorted(by_model.items(), key=lambda kv: -len(kv[1]))
    outcomes, profiles, skipped = [], {}, {}
    base: BaseRows | None = None
    if st.transfer and any(len(rows) >= st.min_observations for _, rows in ranked[: st.max_models]):
        try:
            base = BaseRows.fit(model)
        except ClassifierError:  # no base rows for this model's features: the residual alone
            base = None
    for i, (name, rows) in enumerate(ranked):
        if len(rows) < st.min_observations or i >= st.max_models:
            skipped[name] = len(rows)
            continue
        outcome, profile = adapt_one(model, name, rows, edges, st, base=base)
        outcomes.append(outcome)
        if profile is not None:
            profiles[name] = profile
    if not profiles:
        return AdaptResult(None, outcomes, skipped)
    new_version = version if version is not None else model.version + 1
    notes = {**model.doc.get("notes", {}), "adapted": {n: p.observations for n, p in profiles.items()}}
    return AdaptResult(with_served(model, profiles, new_version, notes), outcomes, skipped)
