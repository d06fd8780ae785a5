"""The demo's load history in a real Redis: what the planner's first plan forecasts from."""

from __future__ import annotations

import time

import pytest

from wattgate.demo.store import prime_load_history
from wattgate.planner.loop import LoopSettings, PlannerLoop
from wattgate.planner.store import PlannerStore
from wattgate.profiles.builtin import load_builtin


def test_primed_history_gives_the_first_plan_the_replays_load_with_its_bursts(redis_url: str) -> None:
    rates = {"SS": 2.0, "LL": 0.25}
    minute = int(time.time() // 60)
    prime_load_history(redis_url, rates, now_s=minute * 60.0)
    store = PlannerStore(redis_url)
    per_minute = store.load_minutes(["SS", "LL"], minute, 60)
    per_second = store.load_second_counts(["SS", "LL"], (minute - 60) * 60, minute * 60)
    for pool, rps in rates.items():  # the minutes are the seconds' sums, at the pool's rate
        assert [sum(per_second[pool][m * 60 : (m + 1) * 60]) for m in range(60)] == per_minute[pool]
        assert sum(per_minute[pool]) / 3600 == pytest.approx(rps, rel=0.1)
    # the planner's default forecast (each minute's busiest 10 s) sees the rate and its Poisson bursts:
    # above the mean, within a few times it
    loop = PlannerLoop(store, load_builtin(), LoopSettings(), lambda: minute * 60 + 5.0, "demo-test")
    demand = loop.forecast(minute * 60 + 5.0, 3)
    assert 2.0 < demand["SS"] < 6.0
    assert 0.25 < demand["LL"] < 2.0
    assert demand["MM"] == 0.0
