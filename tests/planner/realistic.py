"""A realistic Llama-2-70B/H100 profile for tests and benchmarks.

The shipped profile (``wattgate.profiles.builtin``) when the profiles package has it; otherwise one
built here, for tests only, from the DynamoLLM authors' published characterisation (/work/shared/data/profiles):
power W = energy x 10, P99 TTFT = performance; the TBT column is set conservatively from the clock
(60 ms at 1980 MHz, scaled by 1980/clock), below the default 0.2 s SLO at every clock.
"""

from __future__ import annotations

import csv
import importlib
from functools import cache
from pathlib import Path

from wattgate.profiles.table import Profile

DATA = Path("/work/shared/data/profiles")


def _builtin() -> Profile | None:
    try:
        builtin = importlib.import_module("wattgate.profiles.builtin")
    except ImportError:
        return None
    loaded = builtin.load_builtin()
    return loaded if isinstance(loaded, Profile) else None


def available() -> bool:
    return _builtin() is not None or (DATA / "characterization_energy.csv").exists()


@cache
def realistic_profile() -> Profile:
    shipped = _builtin()
    if shipped is not None:
        return shipped
    with (DATA / "characterization_energy.csv").open() as fe, (DATA / "characterization_performance.csv").open() as fp:
        energy = list(csv.DictReader(fe))
        perf = list(csv.DictReader(fp))
    rows = []
    for e, p in zip(energy, perf, strict=True):
        clock = int(e["frequency"])
        rows.append(
            (
                int(e["parallelization_strategy"].removeprefix("TP")),
                clock,
                e["request_type"],
                float(e["load"]),
                float(p["performance"]),
                0.06 * 1980 / clock,
                float(e["energy"]) * 10,
            )
        )
    return Profile("llama-2-70b", "H100-80GB-HBM3", rows, {"source": "tests only: DynamoLLM characterisation"})
