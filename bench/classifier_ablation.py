#!/usr/bin/env python
"""Feature ablation on ShareGPT's held-out conversations: every request, and the requests where a group fires.

``scripts/train_classifier.py --ablate DIR`` writes ``DIR/without_<group>.json`` (the head refitted
without that group, same data and parameters) and ``without_none.json`` (nothing dropped). A feature
group can only change predictions where it is non-zero, so each is scored on all held-out requests
and on the subset where one of its features fires (measured). Groups that never vary in ShareGPT
(reasoning flags, tool choice, JSON schema) cannot be learnt from it: they are ablated on served
models in ``bench/classifier_served.py --models DIR`` instead.

Usage: PYTHONPATH=. python bench/classifier_ablation.py --models DIR [--n 8305]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wattgate.classifier.metrics import score
from wattgate.classifier.model import load_model
from wattgate.classifier.predictor import ModelPredictor
from wattgate.classifier.sharegpt import is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import labels
from wattgate.profiles.classes import ClassEdges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    full = ModelPredictor(load_model(Path(args.models) / "without_none.json"))
    enc, feats, tokens = counter("cl100k_base"), [], []
    for ex in sharegpt_examples(sharegpt_path()):
        if is_holdout(ex.group):
            feats.append(full.features(ex.body, ex.endpoint)[1])
            tokens.append(enc.count(ex.output_text or ""))
            if len(feats) >= args.n:
                break
    y = labels(np.array(tokens), ClassEdges())
    names = full.model.feature_names
    rows = []
    print(f"held-out ShareGPT requests: {len(y)} (measured)")
    print(f"{'without':22s} {'fires in':>9s} {'acc all':>8s} {'bal all':>8s} {'acc fires':>10s} {'bal fires':>10s}")
    for path in sorted(Path(args.models).glob("without_*.json")):
        model = load_model(path)
        dropped = [n for n in names if n not in model.feature_names]
        x = np.array([[f.get(n, 0.0) for n in model.feature_names] for f in feats])
        pred = model.probabilities_batch(x).argmax(axis=1)
        base = full.model.probabilities_batch(np.array([[f.get(n, 0.0) for n in names] for f in feats]))
        fires = np.array([any(f.get(n, 0.0) for n in dropped) for f in feats], dtype=bool)
        s_all, s_f = score(y, pred), score(y[fires], pred[fires]) if fires.any() else None
        b_f = score(y[fires], base.argmax(axis=1)[fires]) if fires.any() else None
        row = {
            "without": path.stem.removeprefix("without_"),
            "fires": int(fires.sum()),
            "accuracy": round(s_all.accuracy, 4),
            "balanced": round(s_all.balanced_accuracy, 4),
            "accuracy_where_fires": round(s_f.accuracy, 4) if s_f else None,
            "balanced_where_fires": round(s_f.balanced_accuracy, 4) if s_f else None,
            "full_model_accuracy_where_fires": round(b_f.accuracy, 4) if b_f else None,
            "full_model_balanced_where_fires": round(b_f.balanced_accuracy, 4) if b_f else None,
        }
        rows.append(row)
        cells = (
            f"{row['accuracy_where_fires']:10.3f} {row['balanced_where_fires']:10.3f}  (with it: "
            f"{row['full_model_accuracy_where_fires']:.3f} / {row['full_model_balanced_where_fires']:.3f})"
            if s_f and b_f
            else f"{'-':>10s} {'-':>10s}"
        )
        print(f"{row['without']:22s} {row['fires']:9d} {row['accuracy']:8.3f} {row['balanced']:8.3f} {cells}")
    print(json.dumps({"bench": "classifier_ablation", "source": "measured", "n": len(y), "rows": rows}))


if __name__ == "__main__":
    main()
