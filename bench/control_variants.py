"""What each control mechanism of ``wattgate`` buys: the same trace replayed with one switch changed at a time.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/control_variants.py TRACE [--gpus N] [--variants a,b]``.
Every figure is modelled (the serving model); the single-pool baseline and the oracle are replayed in
the same run, so the table's ratios compare like with like. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import SloTargets
from wattgate.simulate.policies import Calibrated
from wattgate.simulate.report import Prices, document
from wattgate.simulate.run import SimSettings, simulate
from wattgate.simulate.trace import load_trace, scale

DEFAULT = Calibrated()
VARIANTS = {
    "default": DEFAULT,
    "minute plans": dataclasses.replace(DEFAULT, epoch_s=60.0),
    "standby": dataclasses.replace(DEFAULT, standby=True),
    "reactive path": dataclasses.replace(DEFAULT, reactive=True),
    "minute counts at 0.8 headroom": dataclasses.replace(DEFAULT, series="counts", headroom=0.8),
    "quantile 0.99": dataclasses.replace(DEFAULT, quantile=0.99),
    "no joint forecast": dataclasses.replace(DEFAULT, joint=False),
    "minute plans + standby + reactive": dataclasses.replace(DEFAULT, epoch_s=60.0, standby=True, reactive=True),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--gpus", type=int, default=None)
    p.add_argument("--scale", type=float, default=1.0, help="load scaling, as simulate --scale")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    requests = load_trace(args.trace)
    if args.scale != 1.0:
        requests = scale(requests, args.scale)
    slo = SloTargets()
    base = simulate(
        requests, load_builtin(), ["single-pool", "wattgate-classic", "oracle"], SimSettings(gpus=args.gpus)
    )
    gpus = base.gpus
    rows = [(r.name, r) for r in base.results]
    for name in names:
        started = time.monotonic()
        sim = simulate(requests, load_builtin(), ["wattgate"], SimSettings(gpus=gpus, calibrated=VARIANTS[name]))
        rows.append((f"wattgate: {name}", sim.results[0]))
        print(f"  ... {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    results = [r for _, r in rows]
    for label, r in rows:
        r.name = label
    doc = document(results, slo, Prices(), {})
    by = {p["policy"]: p for p in doc["policies"]}
    oracle_kwh = by["oracle"]["energy_kwh"]
    base_kwh = by["single-pool"]["energy_kwh"]
    print(f"{args.trace}: {len(requests):,} requests, {gpus} GPUs; all figures modelled")
    head = ("policy", "kWh", "vs base", "vs oracle", "SLO ok", "P99 ok", "GPUs", "starts")
    print(f"{head[0]:<50} {head[1]:>7} {head[2]:>8} {head[3]:>9} {head[4]:>7} {head[5]:>6} {head[6]:>5} {head[7]:>6}")
    out = []
    for label, _ in rows:
        q = by[label]
        line = {
            "policy": label,
            "energy_kwh": round(q["energy_kwh"], 3),
            "vs_baseline": round(q["energy_kwh"] / base_kwh - 1, 4),
            "vs_oracle": round(q["energy_kwh"] / oracle_kwh - 1, 4),
            "slo_attainment": round(q["slo_attainment"], 4),
            "types_p99_within_slo": q["types_p99_within_slo"],
            "avg_gpus_held": round(q["avg_gpus_held"], 1),
            "starts": q["reconfigurations"]["instance_starts"],
        }
        out.append(line)
        print(
            f"{label:<50} {line['energy_kwh']:>7.2f} {line['vs_baseline']:>+8.1%} {line['vs_oracle']:>+9.1%} "
            f"{line['slo_attainment']:>7.2%} {line['types_p99_within_slo']:>4}/9 {line['avg_gpus_held']:>5.1f} "
            f"{line['starts']:>6}"
        )
    print(json.dumps({"bench": "control_variants", "trace": args.trace, "gpus": gpus, "rows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
