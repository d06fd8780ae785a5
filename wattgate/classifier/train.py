"""Fitting (scikit-learn, imported lazily): the hashed n-gram text model, the boosted-tree head, and the model document.

Recipe (``scripts/train_classifier.py`` runs it on ShareGPT; ``retrain`` reruns the head part):
1. text: multinomial logistic regression (C=1) over hashed uni/bigrams of the last user message's
   first 256 token ids, 2**16 slots, rows scaled to unit L2 norm;
2. its logits, out-of-fold (5 group folds) on the training rows, become features ``txt_S/M/L``;
3. head: ``HistGradientBoostingClassifier(max_iter=100, max_depth=4)`` on the numeric features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse  # type: ignore[import-untyped]
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.length import LengthModel, midpoints
from wattgate.classifier.model import FORMAT, FORMAT_VERSION, HEAD_NOTE, ClassifierModel, parse_model, sign
from wattgate.classifier.served import ServedProfile
from wattgate.classifier.textmodel import TextModel, encode_array, ngram_indices, text_doc
from wattgate.profiles.classes import ClassEdges

TEXT_DIM = 1 << 16
TEXT_C = 1.0
HEAD_PARAMS: dict[str, Any] = {"max_iter": 100, "max_depth": 4, "learning_rate": 0.1, "random_state": 0}


def labels(output_tokens: NDArray[Any], edges: ClassEdges) -> NDArray[np.int64]:
    """Output class index 0/1/2 (S/M/L) of each token count."""
    out: NDArray[np.int64] = np.digitize(output_tokens, [edges.output_short_max + 0.5, edges.output_medium_max + 0.5])
    return out.astype(np.int64)


def text_matrix(id_lists: Sequence[Sequence[int]], dim: int = TEXT_DIM) -> Any:
    rows, cols, vals = [], [], []
    for r, ids in enumerate(id_lists):
        idx = ngram_indices(ids, dim)
        rows.append(np.full(idx.size, r))
        cols.append(idx)
        vals.append(np.full(idx.size, 1.0 / math.sqrt(max(1, idx.size))))
    shape = (len(id_lists), dim)
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def fit_text(matrix: Any, y: NDArray[np.int64]) -> TextModel:
    lr = LogisticRegression(C=TEXT_C, max_iter=300).fit(matrix, y)
    return TextModel(matrix.shape[1], lr.coef_.astype(np.float32), lr.intercept_.astype(np.float64))


def text_logits(model: TextModel, matrix: Any) -> NDArray[np.float64]:
    return np.asarray(matrix @ model.weights.T.astype(np.float64) + model.bias)


def out_of_fold_logits(matrix: Any, y: NDArray[np.int64], groups: NDArray[Any], folds: int = 5) -> NDArray[np.float64]:
    """Text logits for each training row from a model that did not see its conversation."""
    out = np.zeros((len(y), 3))
    for fit_rows, pred_rows in GroupKFold(folds).split(np.zeros(len(y)), groups=groups):
        out[pred_rows] = text_logits(fit_text(matrix[fit_rows], y[fit_rows]), matrix[pred_rows])
    return out


def fit_head(x: NDArray[np.float64], y: NDArray[np.int64], weights: NDArray[np.float64] | None = None) -> Any:
    if set(np.unique(y)) != {0, 1, 2}:
        raise ClassifierError("training data must hold outputs of all three classes (S, M, L)")
    return HistGradientBoostingClassifier(**HEAD_PARAMS).fit(x, y, sample_weight=weights)


def export_trees(hgb: Any) -> dict[str, Any]:
    """Flatten a fitted 3-class HistGradientBoostingClassifier into the document's ``head`` section."""
    trees = [tp.nodes for per_iter in hgb._predictors for tp in per_iter]
    if any(bool(n["is_categorical"].any()) for n in trees):
        raise ClassifierError("categorical splits are not supported")
    n_nodes = max(len(n) for n in trees)
    size = len(trees) * n_nodes
    feature, left, right = np.zeros(size, np.int32), np.zeros(size, np.int32), np.zeros(size, np.int32)
    threshold, value = np.zeros(size), np.zeros(size)
    for t, nodes in enumerate(trees):
        base = t * n_nodes
        for i, node in enumerate(nodes):
            g = base + i
            leaf = bool(node["is_leaf"])
            feature[g] = 0 if leaf else int(node["feature_idx"])
            # Features are never missing (absent ones are 0), so NaN routing does not arise.
            threshold[g] = 0.0 if leaf else float(node["num_threshold"])
            left[g] = g if leaf else base + int(node["left"])
            right[g] = g if leaf else base + int(node["right"])
            value[g] = float(node["value"]) if leaf else 0.0
        for i in range(len(nodes), n_nodes):  # padding: self-loops
            left[base + i] = right[base + i] = base + i
    depth = max(int(n["depth"].max()) for n in trees)
    return {
        "kind": "trees",
        "baseline": [float(v) for v in np.ravel(hgb._baseline_prediction)],
        "n_trees": len(trees),
        "n_nodes": n_nodes,
        "depth": depth,
        "feature": encode_array(feature, "<i4"),
        "threshold": encode_array(threshold, "<f8"),
        "left": encode_array(left, "<i4"),
        "right": encode_array(right, "<i4"),
        "value": encode_array(value, "<f8"),
    }


def build_model(
    *,
    version: int,
    feature_names: Sequence[str],
    text: TextModel,
    head: dict[str, Any],
    edges: ClassEdges,
    notes: dict[str, Any],
    length: LengthModel | None = None,
) -> ClassifierModel:
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": time.time(),
        "notes": notes,
        "edges": {"output_short_max": edges.output_short_max, "output_medium_max": edges.output_medium_max},
        "feature_names": list(feature_names),
        "text": text_doc(text),
        "head": head,
        "length": (length or midpoints(edges)).to_doc(),
        "served": {},
    }
    return parse_model(sign(doc))


def with_served(
    model: ClassifierModel, profiles: dict[str, ServedProfile], version: int, notes: dict[str, Any]
) -> ClassifierModel:
    """A copy of ``model`` (text model and trees as they are) with these served-model profiles set or replaced."""
    doc = {k: v for k, v in model.doc.items() if k != "sha256"}
    if doc.get("format_version") == 1:  # an older document: carry it to the current format
        doc["length"] = model.length.to_doc()
    served = {name: p.to_doc() for name, p in {**model.served, **profiles}.items()}  # older profiles: current format
    notes = {**notes, HEAD_NOTE: model.head_chars}  # the text model and trees are kept: so is the head they read
    doc.update(format_version=FORMAT_VERSION, served=served, version=version, created_at=time.time(), notes=notes)
    return parse_model(sign(doc))
