#!/usr/bin/env python3
"""Build the shipped planner profile from the serving model (deterministic; tens of minutes on 2 cores).

Usage: scripts/build_profiles.py [--trace CSV] [--arch NAME] [--engine NAME] [--out JSON] [--check] [--quick]

Each row is a steady-state run of one serving-model engine (wattgate/servingmodel/profilegen.py):
Poisson arrivals of one request type at one load, lengths drawn from the Azure conversation trace's
requests of that type's input and output classes. --trace defaults to
../shared/data/traces/AzureLLMInferenceTrace_conv.csv beside the repository; --check compares with
the shipped file instead of writing it (exit 1 when they differ); --quick builds a small profile
(TP8, two clocks, three types) to try the pipeline.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wattgate.profiles.classes import ClassEdges, RequestType  # noqa: E402
from wattgate.servingmodel.calibration import DEFAULT_ARCH, DEFAULT_ENGINE, ServingModel  # noqa: E402
from wattgate.servingmodel.profilegen import LengthPools, PointSettings, build_profile  # noqa: E402

DEFAULT_OUT = REPO / "wattgate" / "profiles" / "data" / "llama-3.1-70b-h100.json"
TRACE_ORIGIN = {
    "repository": "https://github.com/Azure/AzurePublicDataset",
    "path": "data/AzureLLMInferenceTrace_conv.csv",
    "commit": "790921015d50dd6aae7f7e47f39ba0e235ad6b08",
    "licence": "CC-BY 4.0",
    "attribution": "Azure Public Dataset; Patel et al., Splitwise, ISCA 2024",
}


def render(doc: dict[str, Any]) -> str:
    """One row per line: diffs of a rebuilt profile stay readable."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    text = json.dumps(head, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(r) for r in doc["rows"])
    return f'{text},\n "rows": [\n  {rows}\n ]\n}}\n'


def read_pairs(trace: Path) -> list[tuple[int, int]]:
    with trace.open(newline="", encoding="utf-8") as fh:
        return [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(fh)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_trace = REPO.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
    parser.add_argument("--trace", type=Path, default=default_trace)
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--engine", default=DEFAULT_ENGINE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    parser.add_argument("--quick", action="store_true", help="TP8, two clocks, three types (a pipeline check)")
    args = parser.parse_args(argv)
    try:
        pairs = read_pairs(args.trace)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: cannot read the trace {args.trace}: {exc}", file=sys.stderr)
        return 2
    model = ServingModel(args.arch, args.engine)
    lengths = LengthPools.from_pairs(pairs, ClassEdges())
    started = time.monotonic()
    settings = PointSettings()
    provenance = {
        "summary": (
            f"Derived from wattgate's serving model ({args.arch} under the {args.engine} engine calibration on "
            f"{model.calibration.gpu}): every value is modelled, none measured. See wattgate/profiles/data/README.md."
        ),
        "serving_model": {"arch": args.arch, "engine": args.engine, "calibration": "wattgate/servingmodel/data/"},
        "method": (
            f"per row: Poisson arrivals of one request type at one load for {settings.duration_s:g} s (at least "
            f"{settings.min_requests}, at most {settings.max_requests} requests) after {settings.warmup_s:g} s not "
            "counted; P99 over requests of TTFT "
            "and of time per output token; mean instance power. Loads rise until P99 TTFT passes 3x the type's target."
        ),
        "lengths": {
            "trace": TRACE_ORIGIN,
            "rule": "input tokens drawn from the type's input class, output tokens "
            "from its output class (default class edges)",
        },
    }
    kwargs: dict[str, Any] = {}
    if args.quick:
        kwargs = {"tps": (8,), "clocks_mhz": (1200, 1980), "types": tuple(map(RequestType.parse, ("SS", "MM", "LL")))}
    profile = build_profile(
        model,
        lengths,
        settings=settings,
        provenance=provenance,
        log=lambda m: print(f"[{time.monotonic() - started:6.0f} s] {m}", file=sys.stderr, flush=True),
        **kwargs,
    )
    text = render(profile.to_document())
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} differs from a rebuild", file=sys.stderr)
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(profile.to_document()['rows'])} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
