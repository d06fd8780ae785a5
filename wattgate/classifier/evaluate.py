"""``classifier eval``: the model, zero-shot and adapted the way a deployment adapts, against two baselines.

Every request is predicted with ``predict`` (what the gateway calls). With ``adapt_fraction`` F, the
first F of the file (file order = time order) goes the way a deployment's traffic goes: each request
becomes an ``Observation`` (``observe.observation``, what the gateway records) written to the
observations stream of a Redis (an embedded one unless ``redis_url`` is given); ``retrain_once``
(what ``classifier retrain`` runs) reads them, adapts per served model and publishes; the adapted
predictor is the one ``ClassifierWatcher.poll`` hands a gateway. Everything is scored on the rest.
Expected output tokens (the planner's load forecast) are scored too: mean absolute error per request
and the bias of their sum. Baselines learn from the base data, or from the adaptation slice when there is one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier

from wattgate.classifier.adapt import AdaptSettings
from wattgate.classifier.api import Prediction, choose_output_class, requested_max_tokens
from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.length import midpoints
from wattgate.classifier.metrics import Scores, format_scores, score
from wattgate.classifier.model import load_model
from wattgate.classifier.observe import observation
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.retrain import RetrainReport, retrain_once
from wattgate.classifier.sharegpt import Example, jsonl_examples
from wattgate.classifier.store import ClassifierStore, ClassifierWatcher
from wattgate.classifier.train import labels
from wattgate.classifier.transfer import load_base
from wattgate.planner.contract import Keys
from wattgate.profiles.classes import ClassEdges


@dataclass(frozen=True)
class TokenError:
    """Expected output tokens against the true ones (measured answers, modelled expectations)."""

    n: int
    mae: float  # mean |expected - true| per request, tokens
    bias: float  # sum(expected) / sum(true) - 1: what a load forecast built on them is off by

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mae_tokens": round(self.mae, 1), "sum_bias": round(self.bias, 4)}


def token_error(expected: NDArray[np.float64], true: NDArray[Any]) -> TokenError:
    true = np.asarray(true, dtype=np.float64)
    return TokenError(
        len(true), float(np.abs(expected - true).mean()), float(expected.sum() / max(1.0, true.sum()) - 1)
    )


@dataclass(frozen=True)
class EvalReport:
    n_eval: int
    model_version: int
    results: dict[str, Scores]
    tokens: dict[str, TokenError]
    adaptation: RetrainReport | None
    per_model: dict[str, dict[str, Scores]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_eval": self.n_eval,
            "model_version": self.model_version,
            "results": {name: s.to_dict() for name, s in self.results.items()},
            "expected_tokens": {name: t.to_dict() for name, t in self.tokens.items()},
            "per_served_model": {m: {k: s.to_dict() for k, s in r.items()} for m, r in self.per_model.items()},
            "adaptation": self.adaptation.to_dict() if self.adaptation else None,
            "source": "measured",
        }

    def text(self) -> str:
        lines = [f"evaluated on {self.n_eval} requests (model v{self.model_version}; measured)"]
        if self.adaptation:
            lines.append("adaptation: " + self.adaptation.text().replace("\n", "\n  "))
        lines += [format_scores(name, s) for name, s in self.results.items()]
        lines.append("expected output tokens (modelled) against the answers (measured):")
        lines += [f"  {n}: MAE {t.mae:.0f} tokens, sum off by {t.bias:+.1%}" for n, t in self.tokens.items()]
        for model, res in self.per_model.items():
            lines += [f"served model {model!r}"] + [
                f"  {k}: " + format_scores("", s).split("\n")[0] for k, s in res.items()
            ]
        return "\n".join(lines)


def _scores(preds: list[Prediction], y: NDArray[np.int64]) -> Scores:
    probs = np.array([p.output_probs for p in preds]).reshape(-1, 3)
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


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from wattgate.embedded_redis import EmbeddedRedis, EmbeddedRedisError  # noqa: PLC0415

    try:
        server = EmbeddedRedis().start()
    except EmbeddedRedisError as exc:
        raise ClassifierError(f"cannot start the embedded Redis for adaptation: {exc}") from exc
    try:
        yield server.url
    finally:
        server.stop()


def _served(ex: Example) -> str:
    name = ex.body.get("model")
    return name if isinstance(name, str) else ""


def _adapt_via_redis(
    predictor: ModelPredictor,
    examples: list[Example],
    preds: list[Prediction],
    *,
    redis_url: str | None,
    keep_text_slots: bool,
    settings: AdaptSettings,
    published: bool,
) -> tuple[ModelPredictor, RetrainReport]:
    edges, model = predictor.edges, predictor.model
    with _redis(redis_url) as url:
        keys = Keys(f"wg-eval-{uuid.uuid4().hex[:8]}")  # a private prefix: a shared Redis is left as it was
        store = ClassifierStore(url, keys)
        watcher = ClassifierWatcher(url, edges, keys)
        try:
            if published:  # a model given as a file: start from it, as a deployment that had published it
                store.publish(model)
            store.add_observations(
                [
                    observation(
                        p,
                        keep_text_slots=keep_text_slots,
                        request_id=f"eval-{i}",
                        pool=f"{edges.input_class(p.input_tokens).name}{choose_output_class(p.output_probs).name}",
                        predicted_type=f"{edges.input_class(p.input_tokens).name}{choose_output_class(p.output_probs).name}",
                        input_tokens=p.input_tokens,
                        output_tokens=int(ex.output_tokens or 0),
                        ttft_s=None,
                        tbt_s=None,
                        status=200,
                        instance="eval",
                        model=_served(ex),
                        ts=1_000_000.0 + i,
                        max_tokens=requested_max_tokens(ex.body),
                    )
                    for i, (ex, p) in enumerate(zip(examples, preds, strict=True))
                ]
            )
            report = retrain_once(store, settings, edges=edges)
            found = watcher.poll(model.version)
        finally:
            store.close()
            watcher.close()
        return (found[1] if found else predictor), report


def evaluate_file(
    path: Path,
    adapt_fraction: float = 0.0,
    model_path: Path | None = None,
    *,
    keep_text_slots: bool = True,
    redis_url: str | None = None,
    settings: AdaptSettings | None = None,
) -> EvalReport:
    edges = ClassEdges()
    model = load_model(model_path) if model_path else load_shipped_model()
    predictor = ModelPredictor(model, edges)
    examples = jsonl_examples(path)
    preds = [predictor.predict(ex.body, ex.endpoint) for ex in examples]
    true_tokens = np.array([int(ex.output_tokens or 0) for ex in examples])
    y = labels(true_tokens, edges)
    x = np.array([[p.features.get(n, 0.0) for n in model.feature_names] for p in preds], dtype=np.float64)
    cut = int(len(examples) * adapt_fraction)
    rest, rest_true, rest_y = preds[cut:], true_tokens[cut:], y[cut:]
    zero = "model, zero-shot" if cut else "model"
    results = {zero: _scores(rest, rest_y)}
    mid = midpoints(edges)
    tokens = {
        "class midpoints (before length learning)": token_error(
            np.array(
                [
                    mid.expected(p.output_probs, requested_max_tokens(ex.body))
                    for p, ex in zip(rest, examples[cut:], strict=True)
                ]
            ),
            rest_true,
        ),
        zero: token_error(np.array([p.expected_output_tokens or 0.0 for p in rest]), rest_true),
    }
    adaptation, final = None, rest
    if cut:
        adapted, adaptation = _adapt_via_redis(
            predictor,
            examples[:cut],
            preds[:cut],
            redis_url=redis_url,
            keep_text_slots=keep_text_slots,
            settings=settings or AdaptSettings(),
            published=model_path is not None,
        )
        final = [adapted.predict(ex.body, ex.endpoint) for ex in examples[cut:]]
        results["model, adapted"] = _scores(final, rest_y)
        tokens["model, adapted"] = token_error(np.array([p.expected_output_tokens or 0.0 for p in final]), rest_true)
        fit_x, fit_y = x[:cut], y[:cut]
    else:
        bx, bout = load_base(model)
        fit_x, fit_y = bx, labels(bout, edges)
    results.update(_baselines(fit_x, fit_y, x[cut:], rest_y, model.feature_names.index("log_input_tokens")))
    names = sorted({_served(ex) for ex in examples[cut:]})
    per_model: dict[str, dict[str, Scores]] = {}
    if len(names) > 1:
        for name in names:
            idx = [i for i, ex in enumerate(examples[cut:]) if _served(ex) == name]
            per_model[name] = {zero: _scores([rest[i] for i in idx], rest_y[idx])}
            if cut:
                per_model[name]["model, adapted"] = _scores([final[i] for i in idx], rest_y[idx])
    return EvalReport(len(examples) - cut, model.version, results, tokens, adaptation, per_model)
