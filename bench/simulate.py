#!/usr/bin/env python
"""Benchmark of ``wattgate simulate``: replay wall time per policy on an Azure trace (measured), as a
ratio to the single-pool replay in the same run, the iso-SLO search's and the whole run's wall time, then
one JSON line. The figures it replays are modelled. Targets (issue "One serving model"): an hour of trace
under every policy at 256 GPUs within 2 minutes, a day within 15 minutes, on this project's 2-core
machines (the iso-SLO sizing search included).

Usage: PYTHONPATH=. python bench/simulate.py [--trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv]
[--scale X] [--gpus N] [--days D] [--jobs J]. ``--scale 8 --gpus 256`` is the issue's 256-GPU hour: eight
times the conversation hour's requests, so the cluster's GPUs are busy, not only counted. ``--jobs``: policies
replayed at once (as ``simulate --jobs``; default the CPUs this process may use): with more than one, each
policy's wall time overlaps the others', and the whole run's is the figure to read. ``--baseline-tree DIR``:
first run this same benchmark with the code of another checkout (e.g. a worktree of an older commit), in a
child process, then this one, back to back on the same machine, and print this run's CPU and wall time as
ratios to it (the JSON line gains ``baseline``); ``--baseline-tree`` is what a speed-up is judged by, since
an absolute figure moves with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from wattgate.profiles.builtin import load_builtin
from wattgate.simulate.policies import POLICIES
from wattgate.simulate.run import SimSettings, default_jobs, simulate
from wattgate.simulate.trace import load_trace, scale, tile_days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", default="../shared/data/traces/AzureLLMInferenceTrace_conv.csv")
    parser.add_argument("--days", type=float, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="load scaling, as simulate --scale")
    parser.add_argument("--gpus", type=int, default=None, help="cluster size (default: as simulate)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="policies replayed at once (as simulate)")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="checkout whose code runs first, the baseline")
    args = parser.parse_args()
    baseline = _baseline(args.baseline_tree) if args.baseline_tree else None
    requests = load_trace(args.trace)
    if args.scale != 1.0:
        requests = scale(requests, args.scale)
    if args.days:
        requests = tile_days(requests, args.days)
    started, cpu = time.perf_counter(), _cpu_s()
    managed = [name for name, spec in POLICIES.items() if not spec.fixed]  # fixed-* need a --fixed-fleet
    sim = simulate(requests, load_builtin(), managed, SimSettings(gpus=args.gpus), jobs=args.jobs)
    total, cpu = time.perf_counter() - started, _cpu_s() - cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = sim.results
    sizing = sim.sizing_wall_s
    base = next(r.wall_s for r in results if r.name == "single-pool")
    print(
        f"{len(requests):,} requests, {results[0].duration_s / 3600:.1f} simulated hours, {sim.gpus} GPUs, "
        f"{args.jobs} jobs on {os.cpu_count()} CPUs (load average {load})"
    )
    print(f"{'policy':<20} {'wall s':>8} {'x single-pool':>14}")
    for r in results:
        print(f"{r.name:<20} {r.wall_s:>8.2f} {r.wall_s / base:>14.1f}")
    print(f"{'sizing':<20} {sizing:>8.2f}   (the iso-SLO search: {len(sim.sizing)} single-pool replays, one its row)")
    print(f"{'all':<20} {total:>8.2f}   ({cpu:.0f} CPU seconds: this process, its workers and CBC)")
    if baseline is not None:
        print(
            f"{'vs baseline':<20} {total / baseline['total_wall_s']:>8.2f}x wall, {cpu / baseline['cpu_s']:.2f}x CPU "
            f"(baseline {baseline['total_wall_s']:.0f} s wall, {baseline['cpu_s']:.0f} CPU s: {args.baseline_tree})"
        )
    print(
        json.dumps(
            {
                "baseline": baseline,
                "bench": "simulate",
                "requests": len(requests),
                "simulated_s": results[0].duration_s,
                "gpus": sim.gpus,
                "wall_s": {r.name: round(r.wall_s, 3) for r in results},
                "sizing_wall_s": round(sizing, 3),
                "total_wall_s": round(total, 3),
                "cpu_s": round(cpu, 1),
                "jobs": args.jobs,
                "cpus": os.cpu_count(),
                "load_average_1m_at_end": load,
                "machine": platform.machine(),
                "figures": "wall times measured; the replayed energy and latency are modelled",
            }
        )
    )


def _baseline(tree: Path) -> dict[str, object]:
    """Run this benchmark, same arguments but ``--baseline-tree``, with ``tree``'s code; its JSON line."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith("--baseline-tree"):
            skip = a == "--baseline-tree"
            continue
        argv.append(a)
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "simulate.py"), *argv],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=Path.cwd(),
    ).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return {k: line[k] for k in ("total_wall_s", "cpu_s", "sizing_wall_s", "load_average_1m_at_end")}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the replay workers, CBC): the work done, which
    a machine shared with other jobs stretches less than the wall time."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
