"""``wattgate classifier eval`` and ``wattgate classifier retrain``."""

from __future__ import annotations

import json
import sys
from typing import Any

from wattgate.settings import common as c
from wattgate.settings.kinds import boolean, custom, integer, number, path
from wattgate.settings.model import Command, Option, Values
from wattgate.settings.parse import add_command


def _fraction_below_1(raw: Any) -> float:
    value = float(number(0.0).convert(raw))
    if not value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value:g}")
    return value


EVAL_OPTIONS: tuple[Option, ...] = (
    Option(
        "data",
        path(),
        None,
        'JSONL: {"messages": [...]} or {"prompt": "..."} plus "output_tokens"',
        required=True,
        example="data.jsonl",
    ),
    c.JSON.for_command(help="print one JSON object instead of tables"),
    Option(
        "adapt_fraction",
        custom("number in [0, 1)", _fraction_below_1, metavar="F"),
        0.0,
        "feed the first F of the file as observations, evaluate on the rest",
        example="0.5",
    ),
    Option(
        "classifier_file",
        path(),
        None,
        "a classifier model JSON file",
        aliases=("--model",),
        default_text="the shipped model",
        example="model.json",
    ),
    c.CLASSIFIER_TEXT_SLOTS.for_command(aliases=("--text-slots",)),
    c.REDIS_URL.for_command(help="adapt through this Redis (a private key prefix) instead of an embedded one"),
)

RETRAIN_OPTIONS: tuple[Option, ...] = (
    c.REDIS_URL,
    c.REDIS_PREFIX,
    Option("limit", integer(1), 100_000, "most recent observations to read", example="1000"),
    Option(
        "holdout_fraction", number(maximum=0.999999, above=0), 0.2, "most recent share of them held out", example="0.3"
    ),
    Option("half_life_h", number(above=0), 72.0, "observation weight halves every H hours", example="24"),
    Option("min_observations", integer(2), 100, "observations per served model before adapting to it", example="50"),
    Option("dry_run", boolean(), False, "evaluate but do not publish"),
    c.JSON.for_command(help="print one JSON object instead of text"),
)


def _fail(command: str, message: str) -> int:
    print(f"wattgate classifier {command}: error: {message}", file=sys.stderr)
    return 2


def _eval(args: Values) -> int:
    if not args.data.is_file():  # before the training stack is imported (seconds on a busy machine)
        return _fail("eval", f"cannot read {args.data}: no such file")
    from wattgate.classifier.errors import ClassifierError
    from wattgate.classifier.evaluate import evaluate_file

    try:
        report = evaluate_file(
            args.data,
            args.adapt_fraction,
            args.classifier_file,
            keep_text_slots=args.classifier_text_slots,
            redis_url=args.redis_url,
        )
    except ClassifierError as exc:
        return _fail("eval", str(exc))
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0


def _retrain(args: Values) -> int:
    from wattgate.classifier.store import ClassifierStore, StoreError
    from wattgate.planner.contract import Keys
    from wattgate.settings.common import DEFAULT_REDIS_URL, redact_url

    url = args.redis_url or DEFAULT_REDIS_URL
    store = ClassifierStore(url, Keys(args.redis_prefix))
    try:  # before the training stack is imported (seconds on a busy machine): a down Redis ends it at once
        store.current_version()
    except StoreError as exc:
        store.close()
        print(f"wattgate classifier retrain: error: cannot reach Redis at {redact_url(url)}: {exc}", file=sys.stderr)
        return 1
    from wattgate.classifier.adapt import AdaptSettings
    from wattgate.classifier.errors import ClassifierError
    from wattgate.classifier.retrain import retrain_once

    settings = AdaptSettings(
        holdout_fraction=args.holdout_fraction,
        half_life_s=args.half_life_h * 3600,
        min_observations=args.min_observations,
    )
    try:
        report = retrain_once(store, settings, limit=args.limit, dry_run=args.dry_run)
    except ClassifierError as exc:
        return _fail("retrain", str(exc))
    finally:
        store.close()
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0


EVAL = Command("classifier eval", "accuracy of the classifier (and two baselines) on a JSONL file", EVAL_OPTIONS, _eval)
RETRAIN = Command(
    "classifier retrain",
    "learn each served model's habits from the gateways' observations",
    RETRAIN_OPTIONS,
    _retrain,
)
COMMANDS = (EVAL, RETRAIN)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("classifier", help="output-length classifier: evaluate, retrain")
    sub = parser.add_subparsers(dest="classifier_command", metavar="ACTION", required=True)
    add_command(sub, EVAL, "eval")
    add_command(sub, RETRAIN, "retrain")
