"""How well `wattgate profile --sim` recovers the profile the emulator was given: a table and one JSON line.

Runs the real CLI (a sim-backend subprocess on simulated GPUs, Poisson load, engine-reported
timings) on a grid, then compares every measured row with the given profile's value at the same
point. The baseline is the given profile itself (ratio 1.0 = perfect recovery).

    PYTHONPATH=$PWD .venv/bin/python bench/emulator_recovery.py --profile PATH_OR_NAME --tps 8 \\
        --clocks 1200,1980 --loads 0.5,1 --types SS,LL --speed 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from wattgate.cli import main as wattgate_main
from wattgate.profiles.builtin import profile_or_default
from wattgate.profiles.classes import RequestType


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--tps", default="8")
    ap.add_argument("--clocks", default="1200,1980")
    ap.add_argument("--loads", default="0.5,1")
    ap.add_argument("--types", default="SS,LL")
    ap.add_argument("--speed", default="20")
    ap.add_argument("--warmup-s", default="30")
    ap.add_argument("--duration-s", default="60")
    a = ap.parse_args()
    given = profile_or_default(a.profile)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "measured.json"
        args = ["profile", "--sim", "--tps", a.tps, "--clocks", a.clocks, "--loads", a.loads, "--types", a.types]
        args += ["--speed", a.speed, "--warmup-s", a.warmup_s, "--duration-s", a.duration_s, "--out", str(out)]
        if a.profile:
            args += ["--profile", a.profile]
        t0 = time.monotonic()
        if wattgate_main(args) != 0:
            return 1
        wall = time.monotonic() - t0
        rows = json.loads(out.read_text())["rows"]
    print("\ntp clock type load | ttft measured/given | tbt measured/given | power measured/given")
    worst = {"ttft": 0.0, "tbt": 0.0, "power": 0.0}
    for tp, clock, rtype, load, ttft, tbt, power in rows:
        p = given.lookup(tp, clock, RequestType.parse(rtype), load)
        ratios = {"ttft": ttft / p.ttft_p99_s, "tbt": tbt / p.tbt_p99_s, "power": power / p.power_w}
        for k, r in ratios.items():
            worst[k] = max(worst[k], abs(r - 1))
        print(
            f"{tp:<2} {clock:<5} {rtype:<4} {load:<4g} | "
            f"{ratios['ttft']:.3f} | {ratios['tbt']:.3f} | {ratios['power']:.3f}"
        )
    print(
        json.dumps(
            {"bench": "emulator_recovery", "points": len(rows), "wall_s": round(wall, 1), "worst_rel_error": worst}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
