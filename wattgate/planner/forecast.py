"""Forecast each pool's peak load for the next epoch from its per-minute request counts. Pure.

The forecast target is the peak of the one-minute average rate (req/s) over the next epoch. Methods:

- ``peak``: the highest one-minute rate over the recent window;
- ``ewma``: Holt's level + trend (EWMA) projected to the end of the epoch, plus two EWMA deviations;
- ``template``: once a full day of history exists, the peak over the same time of day yesterday,
  scaled by how today's recent level compares with yesterday's at the same time;
- ``auto`` (default, chosen by measurement on the Azure traces, see README): the largest of the
  available methods. Every method's result is multiplied by ``1 + margin``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from wattgate.planner.model import PlannerError

DAY_MIN = 24 * 60


class Method(enum.StrEnum):
    PEAK = "peak"
    EWMA = "ewma"
    TEMPLATE = "template"
    AUTO = "auto"


@dataclass(frozen=True)
class ForecastSettings:
    method: Method = Method.AUTO
    margin: float = 0.15
    window_min: int = 10  # recent window for the peak (bench/planner.py: 10 vs 5 or 15 min)
    alpha: float = 0.3  # EWMA weight of the level
    beta: float = 0.1  # EWMA weight of the trend

    def __post_init__(self) -> None:
        if self.margin < 0 or self.window_min < 1 or not (0 < self.alpha <= 1 and 0 <= self.beta <= 1):
            raise PlannerError("forecast: margin >= 0, window_min >= 1, 0 < alpha <= 1, 0 <= beta <= 1")


def forecast_peak(counts_per_min: Sequence[float], horizon_min: int, settings: ForecastSettings) -> float:
    """Peak req/s over the next ``horizon_min`` minutes from per-minute counts (oldest first, up to now)."""
    if not counts_per_min:
        return 0.0
    rates = [max(c, 0.0) / 60.0 for c in counts_per_min]
    m = settings.method
    values: list[float] = []
    if m in (Method.PEAK, Method.AUTO):
        values.append(peak(rates, settings.window_min))
    if m in (Method.EWMA, Method.AUTO):
        values.append(ewma_trend(rates[-settings.window_min * 4 :], horizon_min, settings.alpha, settings.beta))
    if m in (Method.TEMPLATE, Method.AUTO):
        t = template(rates, horizon_min, settings.window_min)
        if t is not None:
            values.append(t)
        elif m is Method.TEMPLATE:  # not a day of history yet: the recent peak stands in
            values.append(peak(rates, settings.window_min))
    return max(values) * (1.0 + settings.margin)


def peak(rates: Sequence[float], window_min: int) -> float:
    return max(rates[-window_min:])


def ewma_trend(rates: Sequence[float], horizon_min: int, alpha: float, beta: float) -> float:
    level, trend, dev = rates[0], 0.0, 0.0
    for x in rates[1:]:
        prev = level
        err = abs(x - (level + trend))
        level = alpha * x + (1 - alpha) * (level + trend)
        trend = beta * (level - prev) + (1 - beta) * trend
        dev = alpha * err + (1 - alpha) * dev
    return max(level + max(trend, 0.0) * horizon_min + 2.0 * dev, 0.0)


def template(rates: Sequence[float], horizon_min: int, window_min: int) -> float | None:
    """Yesterday's peak over the same next ``horizon_min`` minutes, scaled to today's level."""
    n = len(rates)
    if n < DAY_MIN + window_min:
        return None
    ago = n - DAY_MIN  # index of "now" one day ago
    yesterday_next = rates[ago : ago + horizon_min]
    yesterday_recent = rates[ago - window_min : ago]
    today_recent = rates[-window_min:]
    base = sum(yesterday_recent) / len(yesterday_recent)
    scale = (sum(today_recent) / len(today_recent)) / base if base > 0 else 1.0
    return max(yesterday_next) * min(max(scale, 0.5), 2.0) if yesterday_next else None


@dataclass(frozen=True)
class ForecastError:
    samples: int
    under_rate: float  # fraction of epochs whose actual peak exceeded the forecast
    mean_over_ratio: float  # mean forecast / actual peak when not under (the cost of the margin)
    mean_abs_pct: float


def evaluate(
    counts_per_min: Sequence[float], horizon_min: int, settings: ForecastSettings, warmup_min: int = 10
) -> ForecastError:
    """Replay a per-minute count series: forecast at every minute, compare with the next epoch's peak."""
    under = 0
    over: list[float] = []
    errs: list[float] = []
    n = 0
    for t in range(warmup_min, len(counts_per_min) - horizon_min + 1):
        actual = max(counts_per_min[t : t + horizon_min]) / 60.0
        if actual <= 0:
            continue
        fc = forecast_peak(counts_per_min[:t], horizon_min, settings)
        n += 1
        errs.append(abs(fc - actual) / actual)
        if fc < actual:
            under += 1
        else:
            over.append(fc / actual)
    if n == 0:
        return ForecastError(0, math.nan, math.nan, math.nan)
    return ForecastError(n, under / n, sum(over) / len(over) if over else math.nan, sum(errs) / n)
