#!/usr/bin/env python
"""Zero-shot and adapted accuracy of the classifier for served models other than the one it was trained on.

Prompts: turns of ShareGPT's held-out 20% of conversations (``is_holdout``: never trained on), in
file order. Answers: the length ChatGPT's own answer had there (measured), or that length turned
into another served model's habit (modelled: a rule per model below, with log-normal noise), so one
run covers a model like the training one, a verbose one, a terse one and one whose habit depends on
the prompt (long code answers, short prose), and one whose requests carry reasoning-effort and
forced-tool-call flags that decide the length (``FLAGS``). Each set goes through ``evaluate_file`` with
``--adapt-fraction 0.5``: observations in an embedded Redis, ``retrain``, the model a gateway's
watcher loads (the running system's path). ``--models DIR`` also scores every ``*.json`` model of DIR
(the feature ablations ``scripts/train_classifier.py --ablate DIR`` writes). Prints a table and one JSON line.

Usage: PYTHONPATH=. python bench/classifier_served.py [--n 2000] [--models /tmp/ablate] [--write-sets DIR] [--skip N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wattgate.classifier.evaluate import EvalReport, evaluate_file
from wattgate.classifier.sharegpt import Example, is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter


def _code(ex: Example) -> bool:
    text = str(ex.body["messages"][-1]["content"])
    return "```" in text or sum(text.count(c) for c in "{};=()") > 0.04 * max(1, len(text))


# served model -> answer tokens from (ChatGPT's answer tokens, the request); the noise is added after.
HABITS: dict[str, Callable[[int, Example], float]] = {
    "chatgpt-as-recorded": lambda t, ex: t,
    "verbose-1.8x": lambda t, ex: 1.8 * t + 40,
    "terse-0.45x": lambda t, ex: 0.45 * t,
    "code-long-prose-short": lambda t, ex: 2.2 * t if _code(ex) else 0.5 * t,
}
NOISE_SIGMA = 0.25  # log-normal: one model's lengths for similar prompts vary too
FLAGS = "flags-reasoning-tools"  # a quarter ask for high reasoning effort, a quarter force a tool call
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _flags(body: dict[str, Any], tokens: int, rng: random.Random) -> tuple[dict[str, Any], float]:
    """Reasoning tokens count as completion tokens (OpenAI's usage): +600..1200 with high effort; a forced
    tool call is a short JSON answer (20..60 tokens). Modelled."""
    draw = rng.random()
    if draw < 0.25:
        return {**body, "reasoning_effort": "high"}, tokens + rng.uniform(600, 1200)
    if draw < 0.5:
        return {**body, "tools": [TOOL], "tool_choice": "required"}, rng.uniform(20, 60)
    return body, tokens


def held_out(n: int, skip: int = 0) -> list[tuple[Example, int]]:
    """``n`` held-out turns in file order, after the first ``skip`` (a development set apart from the table's)."""
    enc = counter("cl100k_base")
    out, seen = [], 0
    for ex in sharegpt_examples(sharegpt_path()):
        if is_holdout(ex.group):
            seen += 1
            if seen <= skip:
                continue
            out.append((ex, enc.count(ex.output_text or "")))
            if len(out) >= n:
                break
    return out


def write_set(path: Path, name: str, rows: list[tuple[Example, int]], seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for ex, tokens in rows:
            if name == FLAGS:
                body, answer = _flags(ex.body, tokens, rng)
            else:
                noise = 1.0 if name == "chatgpt-as-recorded" else math.exp(rng.gauss(0.0, NOISE_SIGMA))
                body, answer = ex.body, HABITS[name](tokens, ex) * noise
            f.write(json.dumps({**body, "model": name, "output_tokens": max(1, round(answer))}) + "\n")


def row(name: str, model: str, r: EvalReport) -> dict[str, Any]:
    zero, adapted = r.results["model, zero-shot"], r.results["model, adapted"]
    tok = r.tokens
    return {
        "served_model": name,
        "classifier": model,
        "n_eval": r.n_eval,
        "zero_shot_balanced": round(zero.balanced_accuracy, 3),
        "zero_shot_accuracy": round(zero.accuracy, 3),
        "adapted_balanced": round(adapted.balanced_accuracy, 3),
        "adapted_accuracy": round(adapted.accuracy, 3),
        "majority_accuracy": round(r.results["majority class"].accuracy, 3),
        "tokens_mae_midpoints": round(tok["class midpoints (before length learning)"].mae, 1),
        "tokens_mae_zero_shot": round(tok["model, zero-shot"].mae, 1),
        "tokens_mae_adapted": round(tok["model, adapted"].mae, 1),
        "tokens_bias_zero_shot": round(tok["model, zero-shot"].bias, 3),
        "tokens_bias_adapted": round(tok["model, adapted"].bias, 3),
        "adaptation": [m.kind if m.accepted else "kept current" for m in r.adaptation.result.models]
        if r.adaptation
        else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="held-out requests per served model")
    parser.add_argument("--models", help="a folder of model documents to score too (e.g. feature ablations)")
    parser.add_argument("--served", nargs="*", default=[*HABITS, FLAGS], help="which served models")
    parser.add_argument("--write-sets", help="keep the eval JSONL files in this folder")
    parser.add_argument(
        "--skip", type=int, default=0, help="start after this many held-out turns (a development set: --skip 1200)"
    )
    args = parser.parse_args()
    rows = held_out(args.n, args.skip)
    folder = Path(args.write_sets or tempfile.mkdtemp(prefix="served-sets-"))
    folder.mkdir(parents=True, exist_ok=True)
    models: list[tuple[str, Path | None]] = [("shipped", None)]
    if args.models:
        models += [(p.stem, p) for p in sorted(Path(args.models).glob("*.json"))]
    table = []
    for i, name in enumerate(args.served):
        path = folder / f"{name}.jsonl"
        write_set(path, name, rows, seed=i)
        for label, model_path in models:
            table.append(row(name, label, evaluate_file(path, 0.5, model_path)))
            print_row(table[-1])
    print(
        json.dumps(
            {"bench": "classifier_served", "source": "measured (answers of derived models: modelled)", "rows": table}
        )
    )


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['served_model']:24s} {r['classifier']:32s} zero-shot bal {r['zero_shot_balanced']:.3f} acc "
        f"{r['zero_shot_accuracy']:.3f} | adapted bal {r['adapted_balanced']:.3f} acc {r['adapted_accuracy']:.3f} | "
        f"tokens MAE {r['tokens_mae_midpoints']:.0f}/{r['tokens_mae_zero_shot']:.0f}/{r['tokens_mae_adapted']:.0f} "
        f"bias {r['tokens_bias_zero_shot']:+.1%}/{r['tokens_bias_adapted']:+.1%} | {', '.join(r['adaptation'])}",
        flush=True,
    )


if __name__ == "__main__":
    main()
