#!/usr/bin/env python
"""Benchmark of ``wattgate simulate``: replay wall time per policy on an Azure trace (measured), as a
ratio to the single-pool replay in the same run, then one JSON line. The figures it replays are modelled.

Usage: PYTHONPATH=. python bench/simulate.py [--trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv] [--days D]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from wattgate.profiles.builtin import load_builtin
from wattgate.simulate.policies import POLICIES
from wattgate.simulate.run import simulate
from wattgate.simulate.trace import load_trace, tile_days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", default="../shared/data/traces/AzureLLMInferenceTrace_conv.csv")
    parser.add_argument("--days", type=float, default=None)
    args = parser.parse_args()
    requests = load_trace(args.trace)
    if args.days:
        requests = tile_days(requests, args.days)
    started = time.perf_counter()
    results = simulate(requests, load_builtin(), list(POLICIES))
    total = time.perf_counter() - started
    base = next(r.wall_s for r in results if r.name == "single-pool")
    print(f"{len(requests):,} requests, {results[0].duration_s / 3600:.1f} simulated hours")
    print(f"{'policy':<12} {'wall s':>8} {'x single-pool':>14}")
    for r in results:
        print(f"{r.name:<12} {r.wall_s:>8.2f} {r.wall_s / base:>14.1f}")
    print(f"{'all':<12} {total:>8.2f}")
    print(
        json.dumps(
            {
                "bench": "simulate",
                "requests": len(requests),
                "simulated_s": results[0].duration_s,
                "wall_s": {r.name: round(r.wall_s, 3) for r in results},
                "total_wall_s": round(total, 3),
                "machine": platform.machine(),
                "figures": "wall times measured; the replayed energy and latency are modelled",
            }
        )
    )


if __name__ == "__main__":
    main()
