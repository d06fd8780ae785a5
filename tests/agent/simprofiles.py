"""A small synthetic profile for emulator tests: smooth in clock and load, every value known in closed form."""

from __future__ import annotations

import json
from pathlib import Path

from wattgate.profiles.table import Profile, load_profile

CLOCKS = (800, 1400, 1980)
LOADS = (1.0, 2.0, 4.0)
TYPES = ("SS", "SM", "SL", "MM", "LL")
TTFT_BASE = {"S": 0.1, "M": 0.2, "L": 0.5}


def ttft(clock: int, rtype: str, load: float) -> float:
    return TTFT_BASE[rtype[0]] * (1980 / clock) ** 0.8 * (1 + 0.1 * load)


def tbt(clock: int, rtype: str, load: float) -> float:
    return 0.03 * (1980 / clock) ** 0.4 * (1 + 0.05 * load)


def power(tp: int, clock: int, load: float) -> float:
    return tp * (150 + 250 * (clock / 1980) ** 2 * (1 + 0.1 * load))


def document(tps: tuple[int, ...] = (2,)) -> dict[str, object]:
    rows = [
        [tp, c, t, load, ttft(c, t, load), tbt(c, t, load), power(tp, c, load)]
        for tp in tps
        for c in CLOCKS
        for t in TYPES
        for load in LOADS
    ]
    return {
        "format": "wattgate-profile",
        "version": 1,
        "model": "tiny-test",
        "gpu": "H100-sim",
        "provenance": {"source": "synthetic, tests only"},
        "columns": ["tp", "sm_clock_mhz", "request_type", "load_rps", "ttft_p99_s", "tbt_p99_s", "power_w"],
        "rows": rows,
    }


def small_profile(tps: tuple[int, ...] = (2,)) -> Profile:
    return load_profile(document(tps))


def write_small_profile(path: Path, tps: tuple[int, ...] = (2,)) -> Path:
    path.write_text(json.dumps(document(tps)), encoding="utf-8")
    return path
