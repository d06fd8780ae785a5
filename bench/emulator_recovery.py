"""How well `wattgate profile --sim` recovers the serving model it emulates: a table and one JSON line.

Runs the real CLI (a sim-backend subprocess per TP on simulated GPUs, Poisson load, engine-reported
timings, power from the GPUs' energy counters) on a grid, then compares every row with the serving
model run offline on the same lengths and load (``servingmodel.experiments.poisson_run`` of
``load x duration`` requests, one run per seed). The baseline is the mean of those runs (ratio 1.0 =
perfect recovery); a row marked ``*`` lies outside the range the offline runs span. Both sides are
modelled. A short run's P99 (a few dozen requests) spreads widely from one Poisson sample to the
next, offline runs start empty (no warm-up), and a client that this machine stalls sends requests in
bursts, all of which shows up as TTFT error; the profiler's uniform arrivals avoid the first two
(``tests/agent/test_profiler.py``).

    PYTHONPATH=$PWD .venv/bin/python bench/emulator_recovery.py --tps 8 --clocks 1200,1980 \\
        --loads 1,4 --types SS,LL --speed 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wattgate.agent.profiler import INPUT_TOKENS, OUTPUT_TOKENS
from wattgate.cli import main as wattgate_main
from wattgate.profiles.classes import RequestType
from wattgate.servingmodel.calibration import DEFAULT_ARCH, DEFAULT_ENGINE, ServingModel
from wattgate.servingmodel.experiments import Outcome, poisson_run


def offline(
    model: ServingModel, tp: int, clock: int, rtype: str, load: float, duration_s: float, seeds: int
) -> list[Outcome]:
    """``poisson_run`` of ``load x duration`` requests at this point, one per seed."""
    rt = RequestType.parse(rtype)
    n = max(int(load * duration_s), 2)
    prompt, output = INPUT_TOKENS[rt.input], OUTPUT_TOKENS[rt.output]
    return [poisson_run(model.engine(tp, clock_mhz=clock), load, n, prompt, output, seed=s) for s in range(seeds)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=DEFAULT_ARCH)
    ap.add_argument("--engine", default=DEFAULT_ENGINE)
    ap.add_argument("--tps", default="8")
    ap.add_argument("--clocks", default="1200,1980")
    ap.add_argument("--loads", default="1,4")
    ap.add_argument("--types", default="SS,LL")
    ap.add_argument("--speed", default="2")
    ap.add_argument("--warmup-s", default="30")
    ap.add_argument("--duration-s", default="60")
    ap.add_argument("--seeds", type=int, default=16, help="offline runs averaged per point")
    a = ap.parse_args()
    model = ServingModel(a.arch, a.engine)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "measured.json"
        args = ["profile", "--sim", "--arch", a.arch, "--engine", a.engine, "--tps", a.tps, "--clocks", a.clocks]
        args += ["--loads", a.loads, "--types", a.types, "--speed", a.speed, "--warmup-s", a.warmup_s]
        args += ["--duration-s", a.duration_s, "--out", str(out)]
        t0 = time.monotonic()
        if wattgate_main(args) != 0:
            return 1
        wall = time.monotonic() - t0
        rows = json.loads(out.read_text())["rows"]
    print(f"\n{a.arch} on {a.engine}; every figure modelled; ratio = profile --sim / serving model offline")
    print("(offline: the mean of --seeds poisson_run runs; * = outside the range of those runs)")
    print("tp clock type load | ttft_p99 ratio | tbt_p99 ratio | power ratio")
    worst = {"ttft": 0.0, "tbt": 0.0, "power": 0.0}
    outside = 0
    for tp, clock, rtype, load, ttft, tbt, power in rows:
        runs = offline(model, tp, clock, rtype, load, float(a.duration_s), a.seeds)
        cells = []
        for key, got, field in (("ttft", ttft, "ttft_p99_s"), ("tbt", tbt, "tpot_p99_s"), ("power", power, "power_w")):
            values = [getattr(o, field) for o in runs]
            ratio = got / float(np.mean(values))
            worst[key] = max(worst[key], abs(ratio - 1))
            out = not min(values) <= got <= max(values)
            outside += out
            cells.append(f"{ratio:.3f}{'*' if out else ' '}")
        print(f"{tp:<2} {clock:<5} {rtype:<4} {load:<4g} | {cells[0]:>14} | {cells[1]:>13} | {cells[2]:>11}")
    print(
        json.dumps(
            {
                "bench": "emulator_recovery",
                "arch": a.arch,
                "engine": a.engine,
                "points": len(rows),
                "speed": float(a.speed),
                "wall_s": round(wall, 1),
                "worst_rel_error": {k: round(v, 4) for k, v in worst.items()},
                "outside_offline_range": outside,
                "figures": "modelled (both sides); wall time measured",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
