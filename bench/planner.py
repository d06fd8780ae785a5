"""Planner benchmark: solve time vs pools x GPUs x clock levels, modelled power vs the TP8 baseline, forecast error.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/planner.py [--quick]``. Prints tables and one JSON line.
Solve times are measured wall times on whatever machine runs it (shared 2-core machines are noisy);
power figures are modelled from the shipped Llama-2-70B/H100 profile (or, without it, a test-only one);
forecast errors are measured by replaying the Azure 2023 traces (one hour each).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.planner.realistic import realistic_profile
from wattgate.planner.forecast import ForecastSettings, Method, evaluate
from wattgate.planner.greedy import baseline
from wattgate.planner.model import Inventory, SolverSettings, make_problem
from wattgate.planner.solver import solve
from wattgate.profiles.classes import POOL_NAMES, ClassEdges

TRACES = Path("/work/shared/data/traces")


ALL_CLOCKS = (800, 1000, 1200, 1400, 1600, 1800, 1980)
CLOCK_SETS = {2: (1000, 1980), 4: (800, 1200, 1600, 1980), 7: ALL_CLOCKS}
POOL_SETS = {3: ("SS", "SM", "SL"), 9: POOL_NAMES}


def trace_minutes() -> dict[str, list[float]]:
    """Requests per minute per pool over both Azure traces (conv + code), classified with the default edges."""
    edges = ClassEdges()
    counts: dict[str, Counter[int]] = {p: Counter() for p in POOL_NAMES}
    start: float | None = None
    for name in ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv"):
        with (TRACES / name).open(newline="") as f:
            for row in csv.DictReader(f):
                ts = datetime.strptime(row["TIMESTAMP"].strip()[:26], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                start = ts if start is None else min(start, ts)
                pool = edges.request_type(int(row["ContextTokens"]), int(row["GeneratedTokens"])).name
                counts[pool][int(ts // 60)] += 1
    first = min(min(c) for c in counts.values() if c)
    last = max(max(c) for c in counts.values() if c)
    return {p: [float(c.get(m, 0)) for m in range(first, last + 1)] for p, c in counts.items()}


def trace_mix(minutes: dict[str, list[float]]) -> dict[str, float]:
    total = sum(sum(v) for v in minutes.values())
    return {p: sum(v) / total for p, v in minutes.items()}


def load_for(mix: dict[str, float], pools: tuple[str, ...], rps: float) -> dict[str, float]:
    share = sum(mix[p] for p in pools)
    return {p: rps * mix[p] / share for p in pools}


def bench_solve(mix: dict[str, float], quick: bool) -> list[dict[str, object]]:
    profile = realistic_profile()
    rows = []
    gpu_sizes = (64, 1024) if quick else (16, 64, 256, 1024)
    for pools_n, pools in POOL_SETS.items():
        for clocks_n, clocks in CLOCK_SETS.items():
            for gpus in gpu_sizes:
                settings = SolverSettings(clocks=clocks)
                demand = load_for(mix, pools, rps=gpus * 0.25)  # a cluster sized for the TP8 baseline
                times, milp_only, status = [], [], ""
                for _ in range(1 if quick else 3):
                    t0 = time.perf_counter()
                    problem = make_problem(profile, demand, Inventory.uniform(gpus), settings)
                    d = solve(problem)
                    times.append(time.perf_counter() - t0)
                    milp_only.append(d.solve_time_s)
                    status = d.status.value
                rows.append(
                    {
                        "pools": pools_n,
                        "clocks": clocks_n,
                        "gpus": gpus,
                        "items": len(problem.items),
                        "median_s": round(statistics.median(times), 4),
                        "max_s": round(max(times), 4),
                        "status": status,
                    }
                )
                print(
                    f"{pools_n:>5} {clocks_n:>6} {gpus:>5} {len(problem.items):>5} "
                    f"{statistics.median(times) * 1000:>9.0f} {max(times) * 1000:>7.0f}  {status}",
                    flush=True,
                )
    return rows


def bench_power(mix: dict[str, float]) -> list[dict[str, object]]:
    profile = realistic_profile()
    settings = SolverSettings()
    rows = []
    for rps in (4, 8, 16, 32, 48, 64):
        demand = load_for(mix, POOL_NAMES, rps)
        d = solve(make_problem(profile, demand, Inventory.uniform(256), settings))
        base = baseline(profile, d.demand_rps, settings.slo)
        saving = 1 - d.power_w / base.power_w
        rows.append(
            {
                "rps": rps,
                "gpus": d.gpus_used,
                "power_w": round(d.power_w),
                "baseline_gpus": base.gpus,
                "baseline_w": round(base.power_w),
                "saving": round(saving, 3),
            }
        )
        print(f"{rps:>5} {d.gpus_used:>5} {d.power_w:>9.0f} {base.gpus:>9} {base.power_w:>11.0f} {saving:>7.0%}")
    return rows


def bench_forecast(minutes: dict[str, list[float]]) -> list[dict[str, object]]:
    rows = []
    for method in (Method.PEAK, Method.EWMA, Method.AUTO):
        for margin in (0.0, 0.15, 0.3):
            under, over, n = 0.0, [], 0
            for series in minutes.values():
                e = evaluate(series, 5, ForecastSettings(method=method, margin=margin))
                if e.samples:
                    under += e.under_rate * e.samples
                    n += e.samples
                    if e.mean_over_ratio == e.mean_over_ratio:
                        over.append(e.mean_over_ratio)
            row = {
                "method": method.value,
                "margin": margin,
                "epochs": n,
                "under_rate": round(under / n, 3),
                "mean_over_ratio": round(statistics.mean(over), 3),
            }
            rows.append(row)
            print(f"{method.value:>6} {margin:>6.2f} {n:>6} {under / n:>10.1%} {statistics.mean(over):>10.2f}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer sizes, one repeat")
    args = ap.parse_args()
    minutes = trace_minutes()
    mix = trace_mix(minutes)
    profile = realistic_profile()
    print(f"profile: {profile.model} on {profile.gpu}")
    print("== solve time (measured wall time: build + solve, shared machine)")
    print("pools clocks  GPUs items median_ms  max_ms  status")
    solve_rows = bench_solve(mix, args.quick)
    print("== predicted power vs all TP8 at max clock (modelled), Azure pool mix, 256 GPUs available")
    print("  rps  GPUs   power_W  base_GPUs  baseline_W  saving")
    power_rows = bench_power(mix)
    print("== forecast of the next 5-min peak (1-min rate), Azure traces replayed per pool (measured)")
    print("method margin epochs under_rate over_ratio")
    fc_rows = bench_forecast(minutes)
    print(json.dumps({"bench": "planner", "solve": solve_rows, "power": power_rows, "forecast": fc_rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
