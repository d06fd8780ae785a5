#!/usr/bin/env python
"""How far any decision rule could take the adapted classifier on each served set (issue 16 diagnosis).

For each served set of ``bench/classifier_served.py`` (same held-out prompts, same answer rules and
seeds), the first half adapts the shipped model exactly as ``retrain`` does (``adapt.adapt``, the
function ``retrain_once`` runs on the observations it reads from Redis; the Redis round trip changes no
number) and the second half is scored four ways:
- *rule*: the adapted predictor's classes (what ``classifier eval --adapt-fraction 0.5`` reports);
- *ceiling, zero-shot* / *ceiling, adapted*: the best balanced accuracy that any per-class weights on the
  shipped model's / the adapted profile's calibrated probabilities reach on the scored half itself with
  accuracy >= ``--min-accuracy`` (``decision.ceiling``: an oracle, chosen on the rows it scores, so it bounds
  every decision rule over those probabilities);
- *relabelled head* (only for rules that read the answer length alone): the shipped head's recipe
  (``train.fit_head``) refitted on the 32k base training rows with their answers turned into that served
  model's by its exact rule and noise, i.e. what adaptation could reach if it knew the rule and had 32k
  observations, with its best weights (oracle, as above).
Also prints the class counts of both halves. Prints a table and one JSON line.

Usage: PYTHONPATH=. python bench/classifier_ceiling.py [--n 1200] [--skip 0] [--served terse-0.45x ...]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from classifier_served import FLAGS, HABITS, NOISE_SIGMA, held_out, write_set

from wattgate.classifier.adapt import adapt, batch_probabilities, matrix
from wattgate.classifier.decision import ceiling
from wattgate.classifier.features import Sample
from wattgate.classifier.metrics import score
from wattgate.classifier.predictor import ModelPredictor, load_shipped_model
from wattgate.classifier.sharegpt import jsonl_examples
from wattgate.classifier.train import fit_head, labels
from wattgate.classifier.transfer import load_base
from wattgate.profiles.classes import ClassEdges

LENGTH_ONLY = ("chatgpt-as-recorded", "verbose-1.8x", "terse-0.45x")  # rules that do not read the request


def _bound(probs: Any, y: Any, floor: float) -> dict[str, Any]:
    found = ceiling(probs, y, floor)
    return {"balanced": round(found[0], 3), "accuracy": round(found[1], 3)} if found else {"balanced": None}


def relabelled_head(name: str, x: Any, y: Any, floor: float, seed: int) -> dict[str, Any]:
    """The shipped head's recipe on the base rows, answers turned into the served model's (oracle rule)."""
    model = load_shipped_model()
    bx, bout = load_base(model)
    rng = random.Random(seed)
    noisy = [HABITS[name](int(t), None) * math.exp(rng.gauss(0.0, NOISE_SIGMA)) for t in bout]  # type: ignore[arg-type]
    head = fit_head(bx, labels(np.maximum(1, np.round(noisy)).astype(np.int64), ClassEdges()))
    return _bound(head.predict_proba(x), y, floor)


def one(name: str, path: Path, floor: float, seed: int) -> dict[str, Any]:
    edges, model = ClassEdges(), load_shipped_model()
    predictor = ModelPredictor(model, edges)
    preds = [(predictor.predict(ex.body, ex.endpoint), int(ex.output_tokens or 0)) for ex in jsonl_examples(path)]
    samples = [Sample(dict(p.features), t, 1e6 + i, name, p.text_slots or None) for i, (p, t) in enumerate(preds)]
    cut = len(samples) // 2
    result = adapt(model, samples[:cut], edges)
    profile = result.candidate.served.get(name) if result.candidate else None
    rest = samples[cut:]
    x, slots = matrix(rest, model.feature_names), [s.slots for s in rest]
    y = labels(np.array([s.output_tokens for s in rest]), edges)
    fit_y = labels(np.array([s.output_tokens for s in samples[:cut]]), edges)
    rule = score(y, batch_probabilities(model, profile, x, slots).argmax(axis=1))
    zero = np.array([p.output_probs for p, _ in preds[cut:]])
    out = {
        "served_model": name,
        "classes_adapt_half": np.bincount(fit_y, minlength=3).tolist(),
        "classes_scored_half": np.bincount(y, minlength=3).tolist(),
        "rule": {"balanced": round(rule.balanced_accuracy, 3), "accuracy": round(rule.accuracy, 3)},
        "rule_confusion": rule.confusion,
        "ceiling_zero_shot": _bound(zero, y, floor),
        "ceiling_adapted": _bound(batch_probabilities(model, profile, x, slots, decided=False), y, floor),
    }
    if name in LENGTH_ONLY:
        out["relabelled_head"] = relabelled_head(name, x, y, floor, seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1200, help="held-out requests per served model")
    parser.add_argument("--skip", type=int, default=0, help="start after this many held-out turns")
    parser.add_argument("--served", nargs="*", default=[*HABITS, FLAGS], help="which served models")
    parser.add_argument("--min-accuracy", type=float, default=0.60, help="the accuracy the ceilings must keep")
    args = parser.parse_args()
    rows = held_out(args.n, args.skip)
    folder = Path(tempfile.mkdtemp(prefix="served-ceiling-"))
    table = []
    for i, name in enumerate([*HABITS, FLAGS]):
        if name not in args.served:
            continue
        path = folder / f"{name}.jsonl"
        write_set(path, name, rows, seed=i)  # the seeds bench/classifier_served.py uses
        r = one(name, path, args.min_accuracy, seed=100 + i)
        table.append(r)
        head = r.get("relabelled_head", {}).get("balanced")
        print(
            f"{name:24s} classes {r['classes_adapt_half']} / {r['classes_scored_half']}  rule "
            f"{r['rule']['balanced']:.3f}/{r['rule']['accuracy']:.3f}  ceiling zero-shot "
            f"{r['ceiling_zero_shot']['balanced']}  adapted {r['ceiling_adapted']['balanced']}  relabelled head {head}",
            flush=True,
        )
    print(json.dumps({"bench": "classifier_ceiling", "source": "measured (derived answers: modelled)", "rows": table}))


if __name__ == "__main__":
    main()
