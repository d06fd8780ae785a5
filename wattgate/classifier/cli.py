"""``wattgate classifier eval`` and ``wattgate classifier retrain``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("classifier", help="output-length classifier: evaluate, retrain")
    sub = parser.add_subparsers(dest="classifier_command", metavar="ACTION", required=True)

    ev = sub.add_parser("eval", help="accuracy of the classifier (and two baselines) on a JSONL file")
    ev.add_argument("--data", required=True, help='JSONL: {"messages": [...]} or {"prompt": "..."} + "output_tokens"')
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ev.add_argument("--adapt-fraction", type=float, default=0.0, help="feed the first F of the file as observations")
    ev.add_argument("--model", help="a model JSON file (default: the shipped model)")
    ev.add_argument("--no-text-slots", action="store_true", help="observations keep no text slots (privacy setting)")
    ev.add_argument("--redis-url", help="adapt through this Redis (a private key prefix) instead of an embedded one")
    ev.set_defaults(func=_eval)

    rt = sub.add_parser("retrain", help="learn each served model's habits from the gateways' observations")
    rt.add_argument("--redis-url", required=True)
    rt.add_argument("--prefix", default="wg", help="Redis key prefix (default wg)")
    rt.add_argument("--limit", type=int, default=100_000, help="most recent observations to read")
    rt.add_argument("--holdout-fraction", type=float, default=0.2, help="most recent share of them held out")
    rt.add_argument("--half-life-h", type=float, default=72.0, help="observation weight halves every H hours")
    rt.add_argument("--min-observations", type=int, default=100, help="per served model, to adapt to it")
    rt.add_argument("--dry-run", action="store_true", help="evaluate but do not publish")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=_retrain)


def _fail(message: str) -> int:
    print(f"wattgate classifier: {message}", file=sys.stderr)
    return 2


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wattgate.classifier.errors import ClassifierError
    from wattgate.classifier.evaluate import evaluate_file

    if not 0.0 <= args.adapt_fraction < 1.0:
        return _fail("--adapt-fraction must be in [0, 1)")
    try:
        report = evaluate_file(
            Path(args.data),
            args.adapt_fraction,
            Path(args.model) if args.model else None,
            keep_text_slots=not args.no_text_slots,
            redis_url=args.redis_url,
        )
    except ClassifierError as exc:
        return _fail(str(exc))
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from wattgate.classifier.adapt import AdaptSettings
    from wattgate.classifier.errors import ClassifierError
    from wattgate.classifier.retrain import retrain_once
    from wattgate.classifier.store import ClassifierStore
    from wattgate.planner.contract import Keys

    if not 0.0 < args.holdout_fraction < 1.0 or args.half_life_h <= 0 or args.limit <= 0:
        return _fail("--holdout-fraction must be in (0, 1); --half-life-h and --limit must be positive")
    if args.min_observations < 2:
        return _fail("--min-observations must be at least 2")
    settings = AdaptSettings(
        holdout_fraction=args.holdout_fraction,
        half_life_s=args.half_life_h * 3600,
        min_observations=args.min_observations,
    )
    store = ClassifierStore(args.redis_url, Keys(args.prefix))
    try:
        report = retrain_once(store, settings, limit=args.limit, dry_run=args.dry_run)
    except ClassifierError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0
