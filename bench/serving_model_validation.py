"""Serving-model validation on measurements no fit used: the vLLM curve of Llama-3.1-70B, and leave-one-clock-out.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/serving_model_validation.py [PROFILES_DIR] [--seeds 5] [--skip-loco]``.
Prints two tables and one JSON line. Every modelled figure comes from the shipped calibration
(``wattgate/servingmodel/data/calibration-h100.json``); measured figures are the public data in
``../shared/data/profiles`` (see ``wattgate/servingmodel/measured.py`` for what each column means).
Targets (issue "One serving model"): mean TTFT and mean TPOT within 20% below the knee, P99 TTFT
within 35%, the knee at the right rate step, instance power within 10% (on the characterization).
The leave-one-clock-out part replays all 1,351 characterization rows under each refitted clock law:
tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from wattgate.servingmodel.calibration import load_calibration
from wattgate.servingmodel.fit import below_knee, law_label
from wattgate.servingmodel.measured import read_benchmark
from wattgate.servingmodel.validate import leave_one_clock_out, summary, validate_benchmark

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "profiles")
    p.add_argument(
        "--seeds", type=int, default=5, help="replays per measured rate (the benchmark sends 20 s of requests)"
    )
    p.add_argument("--skip-loco", action="store_true", help="only the vLLM curve")
    args = p.parse_args()
    cal = load_calibration()
    started = time.monotonic()
    rows, knee_measured, knee_model = validate_benchmark(cal, args.profiles_dir, seeds=args.seeds)
    fitrange = {r.rate_rps for r in below_knee(read_benchmark(args.profiles_dir, "llama-3.1-70b"))}
    print("Llama-3.1-70B, TP8, H100, 1024 in / 350 out (measured: vLLM benchmark_serving; modelled: serving model)")
    print(
        f"{'req/s':>5} | {'TTFT mean ms':>21} | {'TTFT p99 ms':>21} | {'TPOT mean ms':>19} | {'TPOT p99 ms':>19} | "
        f"{'W/GPU p50 p99 meas':>18} {'model':>6}"
    )
    print(
        f"{'':>5} | {'meas':>6} {'model':>6} {'err':>6} | {'meas':>6} {'model':>6} {'err':>6} | {'meas':>5} "
        f"{'model':>5} {'err':>6} | {'meas':>5} {'model':>5} {'err':>6} |"
    )
    out_rows = []
    for r in rows:
        p, m, e = r.point, r.model, r.errors
        flag = "" if p.rate_rps in fitrange else "  (past the knee)"
        print(
            f"{p.rate_rps:>5.1f} | {p.ttft_mean_s * 1e3:>6.1f} {m.ttft_mean_s * 1e3:>6.1f} {e['ttft_mean']:>+6.0%} | "
            f"{p.ttft_p99_s * 1e3:>6.1f} {m.ttft_p99_s * 1e3:>6.1f} {e['ttft_p99']:>+6.0%} | "
            f"{p.tpot_mean_s * 1e3:>5.1f} {m.tpot_mean_s * 1e3:>5.1f} {e['tpot_mean']:>+6.0%} | "
            f"{p.tpot_p99_s * 1e3:>5.1f} {m.tpot_p99_s * 1e3:>5.1f} {e['tpot_p99']:>+6.0%} | "
            f"{p.power_p50_w:>8.0f} {p.power_p99_w:>8.0f} {m.power_w / p.tp:>6.0f}{flag}"
        )
        out_rows.append(
            {
                "rate_rps": p.rate_rps,
                "below_knee": p.rate_rps in fitrange,
                **{k: round(v, 4) for k, v in e.items()},
                "model_ttft_p50_s": round(m.ttft_p50_s, 5),
                "model_tpot_p50_s": round(m.tpot_p50_s, 6),
            }
        )
    print(f"knee (first rate with P99 TTFT > 3x the lowest rate's): measured {knee_measured}, modelled {knee_model}")
    below = [r for r in rows if r.point.rate_rps in fitrange]
    bench = {k: summary([r.errors[k] for r in below]) for k in ("ttft_mean", "ttft_p99", "tpot_mean", "tpot_p99")}
    for k, s in bench.items():
        print(f"  below the knee, {k}: median |err| {s['median_abs']:.0%}, max {s['max_abs']:.0%}")
    doc = {
        "bench": "serving_model_validation",
        "figures": "modelled vs measured",
        "vllm_curve": out_rows,
        "knee_measured_rps": knee_measured,
        "knee_modelled_rps": knee_model,
        "below_knee": bench,
    }
    if not args.skip_loco:
        print()
        print("Leave one clock out (DynamoLLM characterization, Llama-2-70B, rows below each series' knee):")
        print(
            f"{'held out':>9} {'law c/knee':>14} {'rows':>5} | {'P99 TTFT |err| med':>18} {'max':>6} {'<=35%':>6} | "
            f"{'power |err| med':>15} {'max':>6} {'<=10%':>6} | {'TBT rows':>8} {'|err| med':>9} {'max':>6} "
            f"{'<=10%':>6}"
        )
        folds = leave_one_clock_out(cal, args.profiles_dir, log=lambda m: print(f"  ... {m}", file=sys.stderr))
        loco = []
        for f in folds:
            t, w, b = summary(f.ttft_errors()), summary(f.power_errors()), summary(f.tbt_errors())
            print(
                f"{f.clock_mhz:>6} MHz {law_label(f.law):>14} {len(f.rows):>5} | "
                f"{t['median_abs']:>18.0%} {t['max_abs']:>6.0%} {t['within_35pct']:>6.0%} | "
                f"{w['median_abs']:>15.0%} {w['max_abs']:>6.0%} {w['within_10pct']:>6.0%} | "
                f"{len(f.tbt_rows):>8} {b['median_abs']:>9.1%} {b['max_abs']:>6.0%} {b['within_10pct']:>6.0%}"
            )
            loco.append(
                {
                    "clock_mhz": f.clock_mhz,
                    "law": dataclasses.asdict(f.law),
                    "rows": len(f.rows),
                    "ttft_p99": t,
                    "power": w,
                    "tbt_rows": len(f.tbt_rows),
                    "tbt_p50": b,
                }
            )
        doc["leave_one_clock_out"] = loco
    doc["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
