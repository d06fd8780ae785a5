"""Planner benchmark: solve time vs pools x GPUs x clock levels, modelled power vs the TP8 baseline, forecast error.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/planner.py [--quick] [--vs REV]``. Prints tables and one JSON line.
Solve times are measured on whatever machine runs it (shared 2-core machines are noisy): wall time of
building + solving, and CPU time of this process plus the cbc child, split into Python (items, model,
warm start), writing the MPS/MIP-start files, CBC and reading its solution. ``--vs REV`` also times the
solver of git revision REV (its ``wattgate`` package, exported to a temp dir) on the same cases in the
same run, alternating REV / this tree twice. Power figures are modelled from the shipped
Llama-2-70B/H100 profile (or, without it, a test-only one); forecast errors are measured by replaying
the Azure 2023 traces (one hour each).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
CODE_ROOT = Path(os.environ.get("WATTGATE_BENCH_ROOT") or HERE)  # whose wattgate package to time (--vs)
sys.path[:0] = [str(CODE_ROOT), str(HERE)]

import pulp  # noqa: E402  (the bench may: the import rule is for the wattgate package)
from pulp.apis import coin_api  # noqa: E402

from tests.planner.realistic import realistic_profile  # noqa: E402
from wattgate.planner.forecast import ForecastSettings, Method, evaluate  # noqa: E402
from wattgate.planner.greedy import baseline  # noqa: E402
from wattgate.planner.model import Inventory, SolverSettings, make_problem  # noqa: E402
from wattgate.planner.solver import solve  # noqa: E402
from wattgate.profiles.classes import POOL_NAMES, ClassEdges  # noqa: E402
from wattgate.profiles.table import Profile  # noqa: E402

TRACES = Path("/work/shared/data/traces")


ALL_CLOCKS = (800, 1000, 1200, 1400, 1600, 1800, 1980)
CLOCK_SETS = {2: (1000, 1980), 4: (800, 1200, 1600, 1980), 7: ALL_CLOCKS}
POOL_SETS = {3: ("SS", "SM", "SL"), 9: POOL_NAMES}
REPLAN_GROWTH = 1.07  # re-plan rows: the load grows 7% over the running plan's (the loop's usual case)


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


class SplitTimer:
    """Wall time spent in PuLP's file writing, the cbc process and reading its solution (patched in)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self._wrap(pulp.LpProblem, "writeMPS", "write")
        self._wrap(coin_api.COIN_CMD, "writesol", "write")
        self._wrap(coin_api.COIN_CMD, "readsol_MPS", "read")
        self._wrap(subprocess.Popen, "wait", "cbc")

    def _wrap(self, owner: Any, name: str, part: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[part] += time.perf_counter() - t0

        setattr(owner, name, timed)


def _cpu_s() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@contextmanager
def _measured(timer: SplitTimer, out: dict[str, list[float]]) -> Iterator[None]:
    timer.wall.clear()
    (py0, cbc0), t0 = _cpu_s(), time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    py1, cbc1 = _cpu_s()
    io = timer.wall["write"] + timer.wall["read"]
    for key, value in (
        ("wall", wall),
        ("cpu", py1 - py0 + cbc1 - cbc0),
        ("cpu_cbc", cbc1 - cbc0),
        ("python", wall - io - timer.wall["cbc"]),
        ("write", timer.wall["write"]),
        ("cbc", timer.wall["cbc"]),
        ("read", timer.wall["read"]),
    ):
        out[key].append(value)


def solve_cases(quick: bool) -> Iterator[tuple[int, int, int, bool]]:
    """(pools, clock levels, GPUs, re-plan) of every solve-time row."""
    gpu_sizes = (64, 1024) if quick else (16, 64, 256, 1024)
    for pools_n in POOL_SETS:
        for clocks_n in CLOCK_SETS:
            for gpus in gpu_sizes:
                yield pools_n, clocks_n, gpus, False
    for gpus in (64, 1024):
        yield 9, 7, gpus, True


def bench_items(mix: dict[str, float]) -> dict[str, float]:
    """CPU ms of make_problem (9 pools, 7 clocks) the first time a profile is used and once its items are cached."""
    profile = realistic_profile()
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(3):
        fresh = Profile(profile.model, profile.gpu, [tuple(r) for r in profile.to_document()["rows"]])
        for leg in ("cold", "cached"):
            t0 = time.process_time()
            make_problem(fresh, load_for(mix, POOL_NAMES, 16.0), Inventory.uniform(64))
            out[leg].append((time.process_time() - t0) * 1000)
    return {f"{k}_ms": round(statistics.median(v), 1) for k, v in out.items()}


def bench_solve(mix: dict[str, float], quick: bool, *, show: bool = True) -> list[dict[str, object]]:
    profile = realistic_profile()
    make_problem(profile, load_for(mix, POOL_NAMES, 16.0), Inventory.uniform(64))  # as in the loop: items cached
    timer = SplitTimer()
    rows: list[dict[str, object]] = []
    for pools_n, clocks_n, gpus, replan in solve_cases(quick):
        settings = SolverSettings(clocks=CLOCK_SETS[clocks_n])
        inv = Inventory.uniform(gpus)
        demand = load_for(mix, POOL_SETS[pools_n], rps=gpus * 0.25)  # a cluster sized for the TP8 baseline
        current = None
        if replan:  # the running plan was made for this load; the load then grew
            current = solve(make_problem(profile, demand, inv, settings)).counts()
            demand = {p: v * REPLAN_GROWTH for p, v in demand.items()}
        times: dict[str, list[float]] = defaultdict(list)
        for _ in range(1 if quick else 3):
            with _measured(timer, times):
                problem = make_problem(profile, demand, inv, settings, current=current)
                d = solve(problem)
        row: dict[str, object] = {
            "pools": pools_n,
            "clocks": clocks_n,
            "gpus": gpus,
            "replan": replan,
            "items": len(problem.items),
            **{f"{k}_ms": round(statistics.median(v) * 1000, 1) for k, v in times.items()},
            "max_wall_ms": round(max(times["wall"]) * 1000, 1),
            "status": d.status.value,
            "power_w": round(d.power_w, 1),
            "gpus_used": d.gpus_used,
        }
        rows.append(row)
        if show:
            print(_solve_line(row), flush=True)
    return rows


SOLVE_HEADER = "pools clocks  GPUs re-plan items  wall_ms  cpu_ms (cbc)  python write   cbc read  status  power_W"


def _solve_line(r: dict[str, Any]) -> str:
    return (
        f"{r['pools']:>5} {r['clocks']:>6} {r['gpus']:>5} {'yes' if r['replan'] else 'no':>7} {r['items']:>5} "
        f"{r['wall_ms']:>8.0f} {r['cpu_ms']:>7.0f} ({r['cpu_cbc_ms']:>3.0f}) {r['python_ms']:>7.0f} "
        f"{r['write_ms']:>5.0f} {r['cbc_ms']:>5.0f} {r['read_ms']:>4.0f}  {r['status']:<8} {r['power_w']:>7.0f}"
    )


def bench_vs(rev: str, quick: bool) -> list[dict[str, object]]:
    """Time REV's solver and this tree's on the same cases, alternating twice; print both runs side by side."""
    with tempfile.TemporaryDirectory(prefix="wattgate-bench-") as tmp:
        archive = subprocess.run(["git", "-C", str(HERE), "archive", rev, "wattgate"], capture_output=True, check=False)
        if archive.returncode:
            raise SystemExit(f"--vs {rev}: git archive failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        legs: list[tuple[str, int, list[dict[str, Any]]]] = []
        for run in (1, 2):
            for name, root in ((rev, tmp), ("this tree", str(HERE))):
                cmd = [sys.executable, __file__, "--solve-only", *(["--quick"] if quick else [])]
                env = {**os.environ, "WATTGATE_BENCH_ROOT": root}
                leg = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if leg.returncode:
                    raise SystemExit(f"--vs: the {name} leg failed: {leg.stderr.strip()[-2000:]}")
                out = leg.stdout
                legs.append((name, run, json.loads(out.splitlines()[-1])["solve"]))
    print(f"== solve time, {rev} vs this tree (measured; median of {1 if quick else 3} per run, 2 runs each)")
    print("pools clocks  GPUs re-plan | " + " | ".join(f"{n[:9]:>9} run {r}: wall cpu" for n, r, _ in legs))
    rows: list[dict[str, object]] = []
    for i, base in enumerate(legs[0][2]):
        cells = [f"{leg[i]['wall_ms']:>17.0f} {leg[i]['cpu_ms']:>4.0f}" for _, _, leg in legs]
        print(
            f"{base['pools']:>5} {base['clocks']:>6} {base['gpus']:>5} {'yes' if base['replan'] else 'no':>7} | "
            + " | ".join(cells)
        )
        rows.append(
            {
                **{k: base[k] for k in ("pools", "clocks", "gpus", "replan")},
                "legs": [
                    {"code": n, "run": r, **{k: leg[i][k] for k in ("wall_ms", "cpu_ms", "status", "power_w")}}
                    for n, r, leg in legs
                ],
            }
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
    ap.add_argument("--vs", metavar="REV", help="also time the solver of this git revision, same cases, same run")
    ap.add_argument("--solve-only", action="store_true", help=argparse.SUPPRESS)  # one leg of --vs
    args = ap.parse_args()
    minutes = trace_minutes()
    mix = trace_mix(minutes)
    if args.solve_only:
        print(json.dumps({"bench": "planner-solve", "solve": bench_solve(mix, args.quick, show=False)}))
        return 0
    profile = realistic_profile()
    print(f"profile: {profile.model} on {profile.gpu}; load average {os.getloadavg()[0]:.2f} (2 cores shared)")
    print("== solve time (measured: wall = build + solve; CPU = this process + cbc; wall split in ms)")
    print(SOLVE_HEADER)
    solve_rows = bench_solve(mix, args.quick)
    items = bench_items(mix)
    print(
        f"(items from the profile: make_problem takes {items['cold_ms']:.0f} ms CPU the first time a profile is "
        f"used, {items['cached_ms']:.0f} ms once its items are cached, as in the rows above and the loop)"
    )
    vs_rows = bench_vs(args.vs, args.quick) if args.vs else []
    print("== predicted power vs all TP8 at max clock (modelled), Azure pool mix, 256 GPUs available")
    print("  rps  GPUs   power_W  base_GPUs  baseline_W  saving")
    power_rows = bench_power(mix)
    print("== forecast of the next 5-min peak (1-min rate), Azure traces replayed per pool (measured)")
    print("method margin epochs under_rate over_ratio")
    fc_rows = bench_forecast(minutes)
    doc = {
        "bench": "planner",
        "solve": solve_rows,
        "items": items,
        "vs": vs_rows,
        "power": power_rows,
        "forecast": fc_rows,
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
