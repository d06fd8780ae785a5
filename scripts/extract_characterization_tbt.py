#!/usr/bin/env python3
"""Extract the measured time between tokens (TBT) per SM clock from the DynamoLLM characterization's own logs.

    .venv/bin/python scripts/extract_characterization_tbt.py JOVAN_VLLM_CHECKOUT [PROFILES_DIR] [--out PATH]

The characterization CSVs (``../shared/data/profiles/characterization_*.csv``) keep only P99 TTFT and
energy, but the benchmark that produced them (jovans2/jovan-vllm
``jovan_vllm/vllm/benchmarks/benchmark_power.py``) also printed, for every (type, clock, load) point, the
mean, P50 and P99 over its requests of each request's TBT (its engine fork timed every decode step of a
request and reported that request's 90th percentile gap). Its console logs are in the repository's root:
``power_perf_8.txt`` (TP8), ``power_perf_tp4.txt`` (TP4), ``power_perf_tp2.txt`` (TP2; stops part-way
through the LM type). Python buffered the benchmark's prints while ``nvidia-smi`` wrote straight to the
file, so the clock lines in a log do not sit next to the results they belong to; each result is placed on
the grid by its order instead (the script loops over types, then clocks 800 ... 1980 MHz, then loads 0.5,
1.0, ... up to the type's maximum: the grid of the characterization CSVs, except for SS and ML in the TP2
log, which stop at 6 and 2 req/s). Checked against the CSVs: every TP8 result's P99 TTFT equals the CSVs'
at the point it is placed at (``same_run`` 1: the same run); the TP4 and TP2 logs are another run of the
same grid (P99 TTFT within a few per cent of the CSVs' at the median, ``same_run`` 0); the script stops if a
type's results read more than 10% off the CSVs' at the median (misplaced). Writes
``wattgate/servingmodel/data/characterization-tbt.csv`` (measured figures, seconds).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wattgate.servingmodel.measured import (  # noqa: E402
    CHARACTERIZATION_INPUT_TOKENS,
    CHARACTERIZATION_MAX_TOKENS,
    read_characterization,
)

LOGS = {8: "power_perf_8.txt", 4: "power_perf_tp4.txt", 2: "power_perf_tp2.txt"}
CLOCKS = (800, 1000, 1200, 1400, 1600, 1800, 1980)  # the benchmark's loop order
DEFAULT_OUT = REPO / "wattgate" / "servingmodel" / "data" / "characterization-tbt.csv"
_STAT = re.compile(r"^(Average|P50|P99) (ttft|tbt) =\s*([0-9.eE+-]*)")
_TYPE = re.compile(r"^(\d+) - (\d+)\s*$")


def _type_names() -> dict[tuple[int, int], str]:
    return {
        (n, m): i + o for i, n in CHARACTERIZATION_INPUT_TOKENS.items() for o, m in CHARACTERIZATION_MAX_TOKENS.items()
    }


def parse_log(text: str) -> list[tuple[str, dict[str, float]]]:
    """Each benchmark point's request type and statistics, in the order printed (the order it ran)."""
    names = _type_names()
    out: list[tuple[str, dict[str, float]]] = []
    rtype, stats = "", {}
    for line in text.splitlines():
        if m := _TYPE.match(line):
            rtype, stats = names[(int(m.group(1)), int(m.group(2)))], {}
        elif m := _STAT.match(line):
            if m.group(3):  # empty where an nvidia-smi line cut in
                stats[f"{m.group(1).lower()}_{m.group(2)}"] = float(m.group(3))
            if m.group(1) == "P99" and m.group(2) == "tbt":  # the last line a point prints
                out.append((rtype, stats))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkout", type=Path, help="a checkout of jovans2/jovan-vllm")
    ap.add_argument("profiles_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "profiles")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    points = read_characterization(args.profiles_dir)
    char = {(p.tp, p.clock_mhz, p.rtype.name, p.load_rps): p.ttft_p99_s for p in points}
    csv_loads: Counter[tuple[int, str]] = Counter()  # loads per clock of each (TP, type) in the CSVs' grid
    for tp, clock, rtype, _ in char:
        if clock == CLOCKS[0]:
            csv_loads[(tp, rtype)] += 1
    rows = []
    for tp, name in LOGS.items():
        points = parse_log((args.checkout / name).read_text(encoding="utf-8", errors="replace"))
        count = Counter(rtype for rtype, _ in points)
        seen: Counter[str] = Counter()
        errors: dict[str, list[float]] = {}
        for rtype, s in points:
            # a type run at every clock has loads x 7 points (the TP2 log's grid is smaller than the CSVs' for
            # SS and ML); a type cut short (the TP2 log ends within LM) is placed on the CSVs' grid
            n = count[rtype] // len(CLOCKS) if count[rtype] % len(CLOCKS) == 0 else csv_loads[(tp, rtype)]
            k = seen[rtype]
            seen[rtype] += 1
            clock, load = CLOCKS[k // n], 0.5 * (k % n + 1)
            ref = char.get((tp, clock, rtype, load))
            same_run = ref is not None and s.get("p99_ttft") == ref
            if ref is not None and "p99_ttft" in s:
                errors.setdefault(rtype, []).append(abs(math.log(s["p99_ttft"] / ref)))
            rows.append(
                {
                    "tp": tp,
                    "clock_mhz": clock,
                    "request_type": rtype,
                    "load_rps": load,
                    "tbt_mean_s": s.get("average_tbt", ""),
                    "tbt_p50_s": s.get("p50_tbt", ""),  # a few points lost a line to interleaved output
                    "tbt_p99_s": s.get("p99_tbt", ""),
                    "ttft_p99_s": s.get("p99_ttft", ""),
                    "same_run": int(same_run),
                }
            )
        for rtype, e in errors.items():  # a point placed wrongly would not read the CSV's TTFT there
            if statistics.median(e) > 0.1:
                raise SystemExit(f"TP{tp} {rtype}: P99 TTFT {statistics.median(e):.0%} off the CSVs': misplaced")
        same = sum(r["same_run"] for r in rows if r["tp"] == tp)
        med = statistics.median(x for e in errors.values() for x in e)
        print(
            f"TP{tp} ({name}): {len(points)} points, {same} with the CSVs' P99 TTFT exactly; "
            f"median |log| P99 TTFT against the CSVs' {med:.3f}",
            file=sys.stderr,
        )
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
