"""The calibrated forecast: its coverage matches the quantile asked for, on Poisson load and on a trend."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from wattgate.planner.forecast import PoolForecasts, QuantileForecaster, QuantileSettings
from wattgate.planner.model import PlannerError


def poisson_counts(rates_per_min: list[float], seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(rng.poisson(r)) for r in rates_per_min]


@pytest.mark.parametrize("quantile", [0.9, 0.99])
@pytest.mark.parametrize("rate", [20.0, 600.0])
def test_coverage_matches_the_quantile_on_steady_poisson_load(quantile: float, rate: float) -> None:
    f = QuantileForecaster(horizon_min=1, settings=QuantileSettings(quantile=quantile, window_min=500))
    for c in poisson_counts([rate] * 3000):
        f.observe(c)
    assert f.coverage == pytest.approx(quantile, abs=0.02 if quantile == 0.99 else 0.04)
    # the forecast sits above the mean by roughly the Poisson quantile, not by a flat margin
    z = 2.33 if quantile == 0.99 else 1.28
    expected = (math.sqrt(rate) + 0.5 * z) ** 2 / 60
    assert f.forecast() == pytest.approx(expected, rel=0.15)


def test_the_quantile_learns_the_errors_of_a_rising_load() -> None:
    """A load that doubles over the run: the EWMA level lags, and the errors it records make up for it."""
    rates = [100.0 * 2 ** (k / 1500) for k in range(3000)]
    f = QuantileForecaster(horizon_min=5, settings=QuantileSettings(quantile=0.95))
    for c in poisson_counts(rates, seed=3):
        f.observe(c)
    assert f.coverage == pytest.approx(0.95, abs=0.04)
    assert 0 < f.bias < 0.5  # it over-forecasts on average (by design), by less than half


def test_before_enough_errors_the_prior_holds_and_bad_settings_are_errors() -> None:
    f = QuantileForecaster(horizon_min=1)
    assert f.forecast() == 0.0 and math.isnan(f.coverage)
    f.observe(100)
    assert f.forecast() == pytest.approx((10 + QuantileSettings().prior_error) ** 2 / 60)
    with pytest.raises(PlannerError):
        QuantileSettings(quantile=1.0)
    with pytest.raises(PlannerError):
        QuantileForecaster(horizon_min=0)


def test_a_burst_is_covered_once_its_kind_has_been_seen() -> None:
    """Minute counts with a burst every 30 minutes: after a few, the quantile covers them."""
    rng = random.Random(2)
    counts = [rng.choice([60, 61, 59]) + (400 if k % 30 == 29 else 0) for k in range(1200)]
    f = QuantileForecaster(horizon_min=2, settings=QuantileSettings(quantile=0.99, window_min=300))
    for c in counts:
        f.observe(c)
    assert f.forecast() * 60 >= 400  # the peak it now expects within two minutes includes a burst


def test_a_burst_seen_before_calibration_lifts_the_forecast_above_the_prior() -> None:
    """Quiet minutes, then bursts after quiet ones (the coding hour's shape), all before ``min_errors``: the
    errors already seen are a floor's evidence the load is burstier than Poisson, and the forecast covers them;
    with nothing above the prior seen, the prior still holds."""
    s = QuantileSettings(quantile=0.9, min_errors=30)
    quiet = QuantileForecaster(horizon_min=2, settings=s)
    bursty = QuantileForecaster(horizon_min=2, settings=s)
    for k in range(12):
        quiet.observe(100)
        bursty.observe(1800 if k % 4 == 3 else 100)
    assert not bursty.calibrated and not quiet.calibrated
    assert quiet.forecast() == pytest.approx((10 + s.prior_error) ** 2 / 60)
    # a burst of 1,800 after quiet minutes: the next one is covered though the level has fallen back
    bursty.observe(100)
    bursty.observe(100)
    assert bursty.forecast() * 60 >= 1800 > (bursty.level + s.prior_error) ** 2  # type: ignore[operator]


def test_the_joint_forecast_covers_the_pools_sum_at_the_quantile_not_each_pool() -> None:
    """Nine independent pools at low load: each pool's 0.9 quantile adds up to far more than the 0.9
    quantile of their sum; the joint forecast keeps each pool's level and scales the margins above the
    levels down to the whole load's quantile, which the busiest minute of the next horizon's whole load
    still stays under at least as often as the quantile says (the forecaster of a horizon's peak covers
    somewhat more than its quantile)."""
    horizon, minutes, warm = 7, 1500, 400
    pools = {f"P{i}": poisson_counts([10.0 + 5 * i] * minutes, seed=10 + i) for i in range(9)}
    total = [sum(c[k] for c in pools.values()) for k in range(minutes)]
    joint, apart = PoolForecasts(horizon, joint=True), PoolForecasts(horizon)
    covered = judged = 0
    ratios = []
    for t in range(warm, minutes - horizon):
        now = {p: c[:t] for p, c in pools.items()}
        together, alone = joint.forecast(now), apart.forecast(now)
        assert set(together) == set(pools)
        assert all(joint.level(p) - 1e-9 <= together[p] <= alone[p] for p in pools)
        ratios.append(sum(alone.values()) / sum(together.values()))
        judged += 1
        covered += sum(together.values()) >= max(total[t : t + horizon]) / 60.0
    assert judged > 1000 and covered / judged >= 0.9
    assert min(ratios) > 1.15  # the pools' own quantiles add up to well over the sum's
    # every pool's margin above its level is scaled by the same factor
    kept = {p: (together[p] - joint.level(p)) / (alone[p] - joint.level(p)) for p in pools}
    assert min(kept.values()) > 0 and max(kept.values()) == pytest.approx(min(kept.values()))
    assert set(joint.quality()) == set(pools)  # the whole load's forecaster is no pool


def test_one_pool_or_a_lower_sum_is_left_alone_and_a_given_total_is_used() -> None:
    counts = poisson_counts([30.0] * 200, seed=5)
    one, ref = PoolForecasts(7, joint=True), PoolForecasts(7)
    assert one.forecast({"SS": counts}) == ref.forecast({"SS": counts})
    # two pools that always burst together: the whole load is their sum, whose quantile is the pools' sum
    both = {"SS": counts, "LL": counts}
    assert PoolForecasts(7, joint=True).forecast(both) == pytest.approx(PoolForecasts(7).forecast(both))
    # a total that is half the sum (the busiest 10 s of all arrivals can be below the pools' summed peaks):
    # the pools come down to it, but never below their levels
    f = one.forecast({"SS": counts})["SS"]
    pf = PoolForecasts(7, joint=True)
    halved = pf.forecast(both, total=list(counts))
    level = pf.level("SS")
    assert 0 < level < f and halved["SS"] == pytest.approx(halved["LL"])
    assert sum(halved.values()) == pytest.approx(max(f, 2 * level))
    # before the whole load's forecaster has errors of its own, its prior is no quantile of this sum
    pools = {f"P{i}": poisson_counts([20.0] * 30, seed=20 + i) for i in range(9)}
    assert PoolForecasts(7, joint=True).forecast(pools) == PoolForecasts(7).forecast(pools)
    later = {p: c * 3 for p, c in pools.items()}
    assert sum(PoolForecasts(7, joint=True).forecast(later).values()) < sum(PoolForecasts(7).forecast(later).values())
