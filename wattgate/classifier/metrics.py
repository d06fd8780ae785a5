"""Classification metrics over the three output classes (accuracy, balanced accuracy, macro-F1, confusion, log loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

CLASS_NAMES = ("S", "M", "L")


@dataclass(frozen=True)
class Scores:
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows: true class S/M/L, columns: predicted class
    log_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "confusion": self.confusion,
            "log_loss": None if self.log_loss is None else round(self.log_loss, 4),
        }


def confusion(y_true: NDArray[Any], y_pred: NDArray[Any]) -> NDArray[np.int64]:
    cm = np.zeros((3, 3), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def log_loss(y_true: NDArray[Any], probs: NDArray[np.float64]) -> float:
    p = np.clip(probs[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)], 1e-9, 1.0)
    return float(-np.log(p).mean())


def score(y_true: NDArray[Any], y_pred: NDArray[Any], probs: NDArray[np.float64] | None = None) -> Scores:
    """Balanced accuracy and macro-F1 average over the classes present in ``y_true``."""
    cm = confusion(y_true, y_pred)
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(3), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(3), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(3), where=denom > 0)
    n = int(cm.sum())
    return Scores(
        n=n,
        accuracy=float(hits.sum() / n) if n else 0.0,
        balanced_accuracy=float(recall[present].mean()) if present.any() else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        confusion=cm.tolist(),
        log_loss=None if probs is None else log_loss(y_true, probs),
    )


def format_scores(name: str, s: Scores) -> str:
    head = f"{name}: accuracy {s.accuracy:.3f}  balanced accuracy {s.balanced_accuracy:.3f}  macro-F1 {s.macro_f1:.3f}"
    rows = ["      predicted S     M     L"]
    for cls, row in zip(CLASS_NAMES, s.confusion, strict=True):
        rows.append(f"  true {cls} " + " ".join(f"{v:5d}" for v in row))
    return "\n".join([head, *rows])
