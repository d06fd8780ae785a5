"""Where the serving model misses the DynamoLLM characterization, by TP and prompt size (shipped calibration).

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/characterization_errors.py [PROFILES_DIR]`` (about 20 s).

Every row of the characterization is replayed as its benchmark ran it (``fit.char_outcome``: the
prototype's prompts, output caps and seeded arrivals) on the calibrated ``dynamollm-2024`` engine, and its
instance power priced by the shipped power model. In-sample (the power model was fitted on these rows;
``bench/serving_model_validation.py`` holds each clock out): this is where the structure of the error
shows, not how well the model predicts. Columns: rows; power, median signed error, median |error|,
share within 10%; absolute P99 TTFT (rows below each series' knee), median signed error and share within
35%. Modelled against measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from wattgate.servingmodel import fit
from wattgate.servingmodel.calibration import ServingModel, load_calibration
from wattgate.servingmodel.measured import read_characterization
from wattgate.servingmodel.validate import modelled_power_w

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "profiles")
    args = p.parse_args()
    cal = load_calibration()
    model = ServingModel("llama-2-70b", "dynamollm-2024", cal)
    points = read_characterization(args.profiles_dir)
    held = set(fit.below_knee_char(points))
    groups: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    for pt in points:
        o = fit.char_outcome(model, pt)
        w = modelled_power_w(cal.power, o, pt) / pt.power_w - 1
        t = o.ttft_p99_s / pt.ttft_p99_s - 1 if pt in held else None
        for key in ((f"TP{pt.tp}", pt.rtype.input.value), (f"TP{pt.tp}", "all"), ("all", pt.rtype.input.value)):
            groups.setdefault(key, []).append((w, t))
        groups.setdefault(("all", "all"), []).append((w, t))
    print(
        f"{'TP':>4} {'input':>5} {'rows':>5} | {'power med':>9} {'|med|':>6} {'<=10%':>6} | "
        f"{'TTFT med':>8} {'<=35%':>6}"
    )
    for (tp, size), g in sorted(groups.items()):
        ws = [w for w, _ in g]
        ts = [t for _, t in g if t is not None]
        print(
            f"{tp:>4} {size:>5} {len(g):>5} | {statistics.median(ws):>+9.1%} {statistics.median(map(abs, ws)):>6.1%} "
            f"{sum(abs(w) <= 0.10 for w in ws) / len(ws):>6.0%} | {statistics.median(ts):>+8.0%} "
            f"{sum(abs(t) <= 0.35 for t in ts) / len(ts):>6.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
