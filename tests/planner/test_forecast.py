from __future__ import annotations

import math

import pytest

from wattgate.planner.forecast import DAY_MIN, ForecastSettings, Method, evaluate, forecast_peak
from wattgate.planner.model import PlannerError


@pytest.mark.parametrize(
    ("counts", "method", "at_least", "at_most"),
    [
        ([60.0] * 30, Method.PEAK, 1.0, 1.0),  # flat 1 req/s
        ([60.0] * 30, Method.EWMA, 1.0, 1.0),
        ([60.0 + 6 * i for i in range(30)], Method.EWMA, 3.9, 6.0),  # rising: the trend looks ahead
        ([0.0] * 30, Method.AUTO, 0.0, 0.0),
    ],
)
def test_methods_follow_the_load(counts: list[float], method: Method, at_least: float, at_most: float) -> None:
    fc = forecast_peak(counts, 5, ForecastSettings(method=method, margin=0.0))
    assert at_least - 1e-9 <= fc <= at_most + 1e-9


def test_margin_is_applied() -> None:
    plain = forecast_peak([120.0] * 20, 5, ForecastSettings(method=Method.PEAK, margin=0.0))
    padded = forecast_peak([120.0] * 20, 5, ForecastSettings(method=Method.PEAK, margin=0.2))
    assert padded == pytest.approx(plain * 1.2)


def test_daily_template_anticipates_a_known_daily_peak() -> None:
    # one day + 1 h of history: quiet except a spike at the same time every day, just ahead of now
    now = DAY_MIN + 60
    series = [60.0] * now
    series[now - DAY_MIN + 3] = 600.0  # yesterday, 3 min after "now"
    no_template = forecast_peak(series, 5, ForecastSettings(method=Method.PEAK, margin=0.0))
    with_template = forecast_peak(series, 5, ForecastSettings(method=Method.TEMPLATE, margin=0.0))
    assert no_template == pytest.approx(1.0)
    assert with_template == pytest.approx(10.0)


def test_evaluate_counts_under_forecasts() -> None:
    rising = [60.0 * (1 + i) for i in range(40)]
    peak_only = evaluate(rising, 5, ForecastSettings(method=Method.PEAK, margin=0.0))
    assert peak_only.samples > 0 and peak_only.under_rate == 1.0  # a recent peak always lags a ramp
    auto = evaluate(rising, 5, ForecastSettings(method=Method.AUTO, margin=0.15))
    assert auto.under_rate < peak_only.under_rate
    assert math.isnan(evaluate([], 5, ForecastSettings()).under_rate)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(PlannerError):
        ForecastSettings(margin=-0.1)
