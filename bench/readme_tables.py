"""The README's replay tables (markdown) from ``wattgate simulate --json`` reports, so they are regenerated, not typed.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/readme_tables.py REPORT.json [--fleet] [--bold wattgate]``, where
REPORT.json is what ``wattgate simulate TRACE --json > REPORT.json`` wrote. Prints the policy table and the
table of attainment per request type. Every figure in them is modelled (the serving model), as the report says.
``--fleet`` gives the *Fixed fleet* section's columns (against the fleet today, pool changes).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from wattgate.profiles.classes import REQUEST_TYPES

MINUS = "\u2212"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:+.1%}".replace("-", MINUS)


def _s(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def policy_table(doc: dict[str, Any], bold: str, fleet: bool) -> list[str]:
    if fleet:
        head = [
            "policy", "energy kWh", "vs the fleet today", "avg kW", "SLO attainment", "types with P99 in SLO",
            "P99 TTFT s", "P99 TBT s", "starts / stops", "pool changes", "clock changes",
        ]  # fmt: skip
    else:
        head = [
            "policy", "energy kWh", "vs single pool", "vs oracle", "GPUs held (avg)", "within SLO",
            "types with P99 in SLO", "P99 TTFT s", "P99 TBT s", "starts / re-shards / clock changes",
        ]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["policies"]:
        rc = p["reconfigurations"]
        common = [
            f"{p['energy_kwh']:.2f}",
            _pct(p["energy_vs_baseline"]),
        ]
        if fleet:
            cells = [
                p["policy"], *common, f"{p['avg_power_kw']:.1f}", f"{p['slo_attainment']:.1%}",
                f"{p['types_p99_within_slo']}/9", _s(p["ttft_p99_s"], 2), _s(p["tbt_p99_s"], 3),
                f"{rc['instance_starts']} / {rc['instance_stops']}", str(rc["pool_changes"]), str(rc["clock_changes"]),
            ]  # fmt: skip
        else:
            cells = [
                p["policy"], *common, _pct(p["energy_vs_oracle"]), f"{p['avg_gpus_held']:.1f}",
                f"{p['slo_attainment']:.1%}", f"{p['types_p99_within_slo']}/9", _s(p["ttft_p99_s"], 2),
                _s(p["tbt_p99_s"], 3), f"{rc['instance_starts']} / {rc['reshards']} / {rc['clock_changes']}",
            ]  # fmt: skip
        if p["policy"] == bold:
            cells = [f"**{c}**" for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    return out


def type_table(doc: dict[str, Any], fleet: bool) -> list[str]:
    """Attainment per request type; ``*`` marks a type whose P99 TTFT or TBT misses its target."""
    types = [t.name for t in REQUEST_TYPES]
    first = doc["policies"][0]["per_type"]
    if fleet:
        head = ["SLO attainment per type", *types]
    else:
        head = ["within SLO by type", *(f"{t} ({first[t]['requests']})" if t in first else t for t in types)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["policies"]:
        cells = []
        for t in types:
            cell = p["per_type"].get(t)
            if cell is None:
                cells.append("-")
            else:
                star = "" if fleet or cell["p99_within_slo"] else "*"
                cells.append(f"{cell['slo_attainment']:.1%}{star}")
        out.append("| " + " | ".join([p["policy"], *cells]) + " |")
    return out


def forecast_line(doc: dict[str, Any], policy: str) -> str:
    """The policy's forecast coverage and bias range over its pools (what the README's prose quotes)."""
    (p,) = (p for p in doc["policies"] if p["policy"] == policy)
    f = [v for v in p["forecast"].values() if v["judged"] and math.isfinite(v["coverage"])]
    if not f:
        return f"{policy}: no forecast judged"
    cov = [v["coverage"] for v in f]
    bias = [v["bias"] for v in f]
    return f"{policy} forecast: coverage {min(cov):.0%}–{max(cov):.0%}, bias {_pct(min(bias))} to {_pct(max(bias))}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--fleet", action="store_true", help="the Fixed fleet section's columns")
    ap.add_argument("--bold", default="wattgate", help="the policy row set in bold")
    args = ap.parse_args()
    with open(args.report) as f:
        doc = json.load(f)
    print("\n".join(policy_table(doc, args.bold, args.fleet)))
    print()
    print("\n".join(type_table(doc, args.fleet)))
    print()
    names = {p["policy"] for p in doc["policies"]}
    for policy in ("wattgate", "fixed-wattgate"):
        if policy in names:
            print(forecast_line(doc, policy))
    if sp := doc.get("single_pool"):
        print(f"iso-SLO single pool: {sp['instances']} x TP8, reached target: {sp['reached_target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
