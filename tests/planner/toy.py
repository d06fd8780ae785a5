"""Small hand-made profiles for planner tests: few enough options to check against brute force."""

from __future__ import annotations

from wattgate.profiles.table import Profile

# per (TP, clock): TTFT at load 1 and its growth per req/s, idle power and power per req/s
_SERIES = {
    (2, 1000): (0.10, 0.06, 500.0, 40.0),
    (2, 2000): (0.06, 0.035, 800.0, 60.0),
    (4, 1000): (0.07, 0.03, 900.0, 30.0),
    (4, 2000): (0.04, 0.015, 1500.0, 50.0),
    (8, 2000): (0.03, 0.01, 2800.0, 80.0),  # the baseline: TP8 at the highest clock
}


def toy_profile(pools: tuple[str, ...] = ("SS", "SM"), loads: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)) -> Profile:
    rows = []
    for n, pool in enumerate(pools):
        for (tp, clock), (ttft1, growth, idle, per_rps) in _SERIES.items():
            for load in loads:
                ttft = ttft1 + growth * (load - 1) * (1 + 0.2 * n)
                rows.append((tp, clock, pool, load, ttft, 0.05, idle + per_rps * load + 10.0 * n))
    return Profile("toy", "toy-gpu", rows)
