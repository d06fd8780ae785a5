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
from collections.abc import Mapping, Sequence
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


PEAK_WINDOW_S = 10  # a minute's peak load: its busiest aligned 10 seconds, as a per-minute rate


def minute_peaks(per_second: Sequence[float]) -> list[float]:
    """Each whole minute's busiest aligned ``PEAK_WINDOW_S`` seconds as a per-minute count (bursts kept)."""
    per_minute = 60 // PEAK_WINDOW_S
    windows = [sum(per_second[i : i + PEAK_WINDOW_S]) for i in range(0, len(per_second) // 60 * 60, PEAK_WINDOW_S)]
    return [max(windows[k : k + per_minute]) * per_minute for k in range(0, len(windows), per_minute)]


@dataclass(frozen=True)
class QuantileSettings:
    """The calibrated forecast: the next period's peak at an upper quantile of the forecaster's own past errors.

    Counts per minute are roughly Poisson, whose spread grows as the square root of the count: the
    forecaster works on square roots (where a Poisson count's spread is about 0.5 whatever its size).
    Its level is an EWMA of the square root of each minute's count; at each minute it records the
    error of what it would have forecast ``horizon_min`` minutes before, the square root of the peak
    count that came minus the level then. The forecast is the level plus the ``quantile`` of the last
    ``window_min`` errors, squared back into req/s. Until ``min_errors`` exist the quantile of those seen is
    floored at ``prior_error``: the prior assumes Poisson minutes, and errors already above it (a burst after
    quiet minutes) say the load is burstier than that, so the forecast covers them rather than the prior.
    """

    quantile: float = 0.99
    window_min: int = 360
    min_errors: int = 30
    alpha: float = 0.3
    prior_error: float = 1.5  # sqrt-count units: 3 Poisson standard deviations

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1 or self.window_min < 1 or self.min_errors < 1 or not 0 < self.alpha <= 1:
            raise PlannerError("quantile forecast: 0 < quantile < 1, window_min >= 1, min_errors >= 1, 0 < alpha <= 1")


class QuantileForecaster:
    """One pool's calibrated forecaster (see ``QuantileSettings``). Feed it every full minute's count in
    order with ``observe``; ``forecast`` gives the peak req/s over the next ``horizon_min`` minutes."""

    def __init__(self, horizon_min: int, settings: QuantileSettings | None = None) -> None:
        if horizon_min < 1:
            raise PlannerError("the forecast horizon must be at least one minute")
        self.horizon_min = horizon_min
        self.s = settings or QuantileSettings()
        self.level: float | None = None
        self._levels: list[float] = []  # level after each minute, for errors once the horizon has passed
        self._roots: list[float] = []  # sqrt of each minute's count
        self._errors: list[float] = []
        self.forecasts = 0
        self.covered = 0  # forecasts the peak that came did not exceed
        self.sum_rel_error = 0.0  # sum of (forecast - actual) / actual over forecasts judged

    def observe(self, count: float) -> None:
        root = math.sqrt(max(count, 0.0))
        self._roots.append(root)
        self.level = root if self.level is None else self.s.alpha * root + (1 - self.s.alpha) * self.level
        self._levels.append(self.level)
        h = self.horizon_min
        if len(self._roots) > h:  # the level h minutes ago has now seen its horizon
            t = len(self._roots) - h - 1
            peak = max(self._roots[t + 1 : t + 1 + h])
            before = self._levels[t]
            # what was forecast then: the errors known then are those whose horizon had passed by then
            forecast = (before + self._quantile(upto=max(len(self._errors) - (h - 1), 0))) ** 2
            self._errors.append(peak - before)
            actual = peak**2
            if actual > 0:
                self.forecasts += 1
                self.covered += forecast >= actual
                self.sum_rel_error += (forecast - actual) / actual
        del self._errors[: max(len(self._errors) - self.s.window_min, 0)]
        keep = h + 1
        if len(self._roots) > 4 * keep:  # only the last horizon is needed again
            del self._roots[:-keep], self._levels[:-keep]

    @property
    def calibrated(self) -> bool:
        """Whether the quantile comes from its own errors (else from the prior)."""
        return len(self._errors) >= self.s.min_errors

    def _quantile(self, upto: int | None = None) -> float:
        errs = self._errors if upto is None else self._errors[:upto]
        if not errs:
            return self.s.prior_error
        ranked = sorted(errs)
        q = ranked[min(math.ceil(self.s.quantile * len(ranked)) - 1, len(ranked) - 1)]
        # until it has min_errors of its own the prior is a floor, not the answer: errors already seen above it
        # say the load is burstier than Poisson (a burst after quiet minutes), and the forecast must cover them
        return q if len(errs) >= self.s.min_errors else max(q, self.s.prior_error)

    def forecast(self) -> float:
        """Peak req/s over the next horizon at the configured quantile (0 before any minute was seen)."""
        if self.level is None:
            return 0.0
        return max(self.level + self._quantile(), 0.0) ** 2 / 60.0

    @property
    def coverage(self) -> float:
        """Share of judged forecasts that the peak did not exceed (should be near the quantile)."""
        return self.covered / self.forecasts if self.forecasts else math.nan

    @property
    def bias(self) -> float:
        """Mean (forecast - actual) / actual over judged forecasts: the cost of the quantile."""
        return self.sum_rel_error / self.forecasts if self.forecasts else math.nan


TOTAL = "*"  # the joint forecaster's key: the whole load, every pool together


class PoolForecasts:
    """Every pool's ``QuantileForecaster``, fed the minutes of per-pool count series as they grow, and
    (``joint``; the replay's wattgate and the planner loop turn it on by default) one of the whole load that
    bounds their sum.

    The replay hands it the whole per-minute series up to now at each plan, the planner loop its window
    of the last minutes with the absolute minute it ends at; it feeds only the minutes it has not seen (a
    series that ends before what it saw, i.e. a clock that went back, starts that pool afresh), so a
    forecast costs the same at minute 10 and at minute 10,000.

    Joint: each pool's forecast is its own upper quantile, and the pools' errors are largely independent,
    so the sum of the pools' quantiles is far above the same quantile of their sum (nine pools at low load:
    more than twice the whole load's busiest minute). The plan's instances carry the pools' load together
    (its routes send several types to one pool, and the pools share the cluster), so what must be covered
    at the quantile is the sum: when the pools' forecasts add up to more than the forecast of the whole
    load, each pool keeps its level (its EWMA, squared back into req/s) and the margins above the levels
    are scaled down by the same factor, to what the whole load's forecast leaves above the levels' sum
    (never below the levels: a pool's expected load is not shared away); only once the whole load's
    forecaster has its own errors (its prior is no quantile of this load's sum). The whole load's
    series is ``total`` when given (the busiest 10 s of all arrivals, which is below the sum of the pools'
    busiest 10 s), else the sum of the pools' series."""

    def __init__(self, horizon_min: int, settings: QuantileSettings | None = None, *, joint: bool = False) -> None:
        self.horizon_min = horizon_min
        self.settings = settings or QuantileSettings()
        self.joint = joint
        self._pools: dict[str, tuple[QuantileForecaster, int]] = {}

    def forecast(
        self,
        series: Mapping[str, Sequence[float]],
        end_minute: int | None = None,
        total: Sequence[float] | None = None,
    ) -> dict[str, float]:
        """req/s per pool. ``series`` runs from minute 0 (the replay), or, with ``end_minute``, is the last
        ``len`` whole minutes before that absolute minute (the planner loop's sliding Redis window);
        ``total``, aligned with them, is the whole load's series (default: the sum of the pools')."""
        out = {pool: self._feed(pool, counts, end_minute) for pool, counts in series.items()}
        if not self.joint or len(out) < 2:
            return out
        if total is None:
            lengths = {len(c) for c in series.values()}
            if len(lengths) != 1:
                return out
            total = [sum(minute) for minute in zip(*series.values(), strict=True)]
        whole, summed = self._feed(TOTAL, total, end_minute), sum(out.values())
        if summed <= whole or not self._pools[TOTAL][0].calibrated:
            return out
        # each pool keeps its level; only the margins above the levels are scaled, to what the whole load's
        # forecast leaves above the levels' sum
        levels = {p: min(self.level(p), v) for p, v in out.items()}
        margins = summed - sum(levels.values())
        if margins <= 0:
            return out
        keep = min(max(whole - sum(levels.values()), 0.0) / margins, 1.0)
        return {p: levels[p] + (v - levels[p]) * keep for p, v in out.items()}

    def level(self, pool: str) -> float:
        """A pool's level (its EWMA of square roots) as req/s: what the joint scaling never cuts below."""
        level = self._pools[pool][0].level
        return 0.0 if level is None else level**2 / 60.0

    def _feed(self, pool: str, counts: Sequence[float], end_minute: int | None) -> float:
        start = 0 if end_minute is None else end_minute - len(counts)
        end = start + len(counts)
        f, seen = self._pools.get(pool, (None, start))
        if f is None or seen > end:
            f, seen = QuantileForecaster(self.horizon_min, self.settings), start
        for c in counts[max(seen, start) - start :]:
            f.observe(c)
        self._pools[pool] = (f, end)
        return f.forecast()

    def quality(self) -> dict[str, tuple[float, float, int]]:
        """Per pool: (coverage, bias, forecasts judged) of its own forecaster (before the joint scaling)."""
        return {p: (f.coverage, f.bias, f.forecasts) for p, (f, _) in self._pools.items() if p != TOTAL}
