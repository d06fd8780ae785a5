"""``classifier eval``: the model against two baselines (majority class, input length only) on a JSONL file.

With ``adapt_fraction`` F the first F of the file (in file order, taken as time order) is fed to the
same adaptation ``retrain`` runs, and everything is evaluated on the rest. The baselines learn from
the base training data, or from the adaptation slice when there is one (what a deployment could
learn without a text model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier

from wattgate.classifier.adapt import AdaptResult, adapt, load_base
from wattgate.classifier.features import Sample
from wattgate.classifier.metrics import Scores, format_scores, score
from wattgate.classifier.model import ClassifierModel, load_model
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.sharegpt import Example, jsonl_examples
from wattgate.classifier.train import labels
from wattgate.profiles.classes import ClassEdges


@dataclass(frozen=True)
class EvalReport:
    n_eval: int
    model_version: int
    results: dict[str, Scores]
    adaptation: AdaptResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_eval": self.n_eval,
            "model_version": self.model_version,
            "results": {name: s.to_dict() for name, s in self.results.items()},
            "adaptation": self.adaptation.to_dict() if self.adaptation else None,
            "source": "measured",
        }

    def text(self) -> str:
        lines = [f"evaluated on {self.n_eval} requests (model v{self.model_version}; measured)"]
        if self.adaptation:
            lines.append(f"adaptation: {self.adaptation.reason}")
        lines += [format_scores(name, s) for name, s in self.results.items()]
        return "\n".join(lines)


def _features(predictor: ModelPredictor, examples: list[Example]) -> tuple[NDArray[np.float64], list[Sample]]:
    names = predictor.model.feature_names
    rows, samples = [], []
    for i, ex in enumerate(examples):
        _, feats = predictor.features(ex.body, ex.endpoint)
        rows.append([feats.get(n, 0.0) for n in names])
        samples.append(Sample(feats, int(ex.output_tokens or 0), float(i)))
    return np.array(rows, dtype=np.float64), samples


def _model_scores(model: ClassifierModel, x: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
    probs = model.probabilities_batch(x)
    return score(y, probs.argmax(axis=1), probs)


def _baselines(
    fit_x: NDArray[np.float64], fit_y: NDArray[np.int64], x: NDArray[np.float64], y: NDArray[np.int64], li: int
) -> dict[str, Scores]:
    majority = int(np.bincount(fit_y, minlength=3).argmax())
    out = {"majority class": score(y, np.full(len(y), majority))}
    if len(set(fit_y.tolist())) > 1:
        m = HistGradientBoostingClassifier(max_iter=50, max_depth=3, random_state=0).fit(fit_x[:, [li]], fit_y)
        out["input length only"] = score(y, m.predict(x[:, [li]]))
    else:
        out["input length only"] = out["majority class"]
    return out


def evaluate_file(path: Path, adapt_fraction: float = 0.0, model_path: Path | None = None) -> EvalReport:
    edges = ClassEdges()
    model = load_model(model_path) if model_path else load_shipped_model()
    predictor = ModelPredictor(model, edges)
    examples = jsonl_examples(path)
    x, samples = _features(predictor, examples)
    y = labels(np.array([s.output_tokens for s in samples]), edges)
    cut = int(len(examples) * adapt_fraction)
    results: dict[str, Scores] = {}
    adaptation = None
    base = load_base(model)
    li = model.feature_names.index("log_input_tokens")
    if cut:
        results["model (before adaptation)"] = _model_scores(model, x[cut:], y[cut:])
        adaptation = adapt(model, base, samples[:cut], edges)
        if adaptation.candidate is not None:
            model = adaptation.candidate
        fit_x, fit_y = x[:cut], y[:cut]
    else:
        fit_x, fit_y = base.x, labels(base.output_tokens, edges)
    results["model" if not cut else "model (after adaptation)"] = _model_scores(model, x[cut:], y[cut:])
    results.update(_baselines(fit_x, fit_y, x[cut:], y[cut:], li))
    return EvalReport(len(examples) - cut, model.version, results, adaptation)
