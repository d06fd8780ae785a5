"""Classifier error as a confusion matrix over output classes, and sampling predictions from it.

The default is measured: the shipped classifier with the default routing thresholds (0.35 / 0.30)
on 4,000 held-out ShareGPT turns (``scripts/measure_confusion.py``), accuracy 0.651.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from wattgate.profiles.classes import LENGTH_CLASSES, LengthClass
from wattgate.simulate.trace import SimulateError

MEASURED: tuple[tuple[int, ...], ...] = ((142, 307, 110), (20, 1383, 671), (3, 284, 1080))


@dataclass(frozen=True)
class Confusion:
    """Rows: true output class S/M/L; columns: predicted class. Row-normalised on use."""

    counts: tuple[tuple[float, ...], ...] = MEASURED

    def __post_init__(self) -> None:
        rows = self.counts
        if len(rows) != 3 or any(len(r) != 3 for r in rows) or any(v < 0 for r in rows for v in r):
            raise SimulateError("a confusion matrix is 3 rows (true S/M/L) of 3 numbers >= 0 (predicted S/M/L)")
        if any(sum(r) <= 0 for r in rows):
            raise SimulateError("every row of the confusion matrix needs a positive sum")

    @classmethod
    def perfect(cls) -> Confusion:
        return cls(((1, 0, 0), (0, 1, 0), (0, 0, 1)))

    @classmethod
    def parse(cls, spec: str) -> Confusion:
        """``measured``, ``perfect``, a JSON file/text ``[[..],[..],[..]]`` or ``{"confusion": ...}``."""
        text = spec.strip()
        if text == "measured":
            return cls()
        if text == "perfect":
            return cls.perfect()
        try:
            raw = json.loads(Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text)
        except (OSError, ValueError) as exc:
            raise SimulateError(f"--confusion: not 'measured', 'perfect', a JSON matrix or a file ({exc})") from exc
        if isinstance(raw, dict):
            raw = raw.get("confusion")
        try:
            return cls(tuple(tuple(float(v) for v in row) for row in raw))
        except (TypeError, ValueError) as exc:
            raise SimulateError(f"--confusion: expected a 3x3 matrix, got {raw!r}") from exc

    @property
    def accuracy_balanced(self) -> float:
        return sum(r[i] / sum(r) for i, r in enumerate(self.counts)) / 3


class Sampler:
    """Draws the predicted output class of each request from its true class's row (seeded)."""

    def __init__(self, confusion: Confusion, seed: int) -> None:
        self._rng = random.Random(seed)
        self._cum: list[list[float]] = []
        for row in confusion.counts:
            total, acc, cum = sum(row), 0.0, []
            for v in row:
                acc += v / total
                cum.append(acc)
            self._cum.append(cum)

    def predict(self, true_class: LengthClass) -> LengthClass:
        x = self._rng.random()
        for cls, edge in zip(LENGTH_CLASSES, self._cum[true_class.rank], strict=True):
            if x < edge:
                return cls
        return LENGTH_CLASSES[-1]
