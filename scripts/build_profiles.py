#!/usr/bin/env python3
"""Rebuild the shipped profile(s) under wattgate/profiles/data/ from the public measurements.

Usage: scripts/build_profiles.py [PROFILES_DIR] [--trace CSV] [--out JSON] [--check]
PROFILES_DIR defaults to ../shared/data/profiles relative to the repository root. --check compares
with the shipped file instead of writing it (exit 1 when they differ).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wattgate.profiles.build import Sources, build_llama2_70b_h100  # noqa: E402
from wattgate.profiles.classes import ProfilesError  # noqa: E402

DEFAULT_OUT = REPO / "wattgate" / "profiles" / "data" / "llama-2-70b-h100.json"


def render(doc: dict[str, Any]) -> str:
    """One row per line: diffs of a rebuilt profile stay readable."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    text = json.dumps(head, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(r) for r in doc["rows"])
    return f'{text},\n "rows": [\n  {rows}\n ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "profiles")
    parser.add_argument(
        "--trace", type=Path, default=None, help="Azure conv trace CSV (default: ../traces/ next to it)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    try:
        doc = build_llama2_70b_h100(Sources.under(args.profiles_dir, args.trace))
    except ProfilesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = render(doc)
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a rebuild'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(doc['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
