"""Profile tables: (TP, SM clock, request type, load) -> P99 TTFT, P99 TBT, instance power, interpolated.

File format (JSON, never pickled)::

    {"format": "wattgate-profile", "version": 1,
     "model": "llama-2-70b", "gpu": "H100-80GB-HBM3",
     "provenance": {...free-form: sources, licences, assumptions...},
     "columns": ["tp", "sm_clock_mhz", "request_type", "load_rps", "ttft_p99_s", "tbt_p99_s", "power_w"],
     "rows": [[8, 1980, "SS", 0.5, 0.11, 0.031, 2700.0], ...]}

Interpolation is linear in load within one (TP, clock, type) series, and linear between the two
nearest measured clocks. Loads between 0 and the lowest measured load take the lowest measured
point's values: latency cannot be worse with less load, and power is over- not under-estimated.
Loads above the highest measured load, clocks outside the measured range and unmeasured TP or type
raise ``ProfileRangeError``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets

FORMAT = "wattgate-profile"
FORMAT_VERSION = 1
COLUMNS = ("tp", "sm_clock_mhz", "request_type", "load_rps", "ttft_p99_s", "tbt_p99_s", "power_w")


class ProfileFormatError(ProfilesError):
    """A profile file that is not valid (schema, types, gaps, duplicates)."""


class ProfileRangeError(ProfilesError):
    """A query outside what the profile measured."""


@dataclass(frozen=True)
class ProfilePoint:
    """One operating point. All three values are modelled from measurements, never measured live."""

    ttft_p99_s: float
    tbt_p99_s: float
    power_w: float


@dataclass(frozen=True)
class _Series:
    loads: tuple[float, ...]
    points: tuple[ProfilePoint, ...]

    def at(self, load_rps: float) -> ProfilePoint:
        if load_rps <= self.loads[0]:
            return self.points[0]
        if load_rps > self.loads[-1] + 1e-9:
            raise ProfileRangeError(f"load {load_rps:g} req/s is above the highest measured {self.loads[-1]:g}")
        j = min(bisect.bisect_left(self.loads, load_rps), len(self.loads) - 1)
        i = max(j - 1, 0)
        if i == j:
            return self.points[j]
        w = (load_rps - self.loads[i]) / (self.loads[j] - self.loads[i])
        return _lerp(self.points[i], self.points[j], w)


def _lerp(a: ProfilePoint, b: ProfilePoint, w: float) -> ProfilePoint:
    return ProfilePoint(
        ttft_p99_s=a.ttft_p99_s + (b.ttft_p99_s - a.ttft_p99_s) * w,
        tbt_p99_s=a.tbt_p99_s + (b.tbt_p99_s - a.tbt_p99_s) * w,
        power_w=a.power_w + (b.power_w - a.power_w) * w,
    )


class Profile:
    """A validated profile for one model on one GPU type."""

    def __init__(
        self,
        model: str,
        gpu: str,
        rows: Iterable[tuple[int, int, str, float, float, float, float]],
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.gpu = gpu
        self.provenance: dict[str, Any] = dict(provenance or {})
        raw: dict[tuple[int, int, RequestType], dict[float, ProfilePoint]] = {}
        for n, row in enumerate(rows):
            tp, clock, rtype, load, ttft, tbt, power = _check_row(n, row)
            series = raw.setdefault((tp, clock, rtype), {})
            if load in series:
                raise ProfileFormatError(f"row {n}: duplicate point tp={tp} clock={clock} type={rtype} load={load:g}")
            series[load] = ProfilePoint(ttft, tbt, power)
        if not raw:
            raise ProfileFormatError("profile has no rows")
        self._series: dict[tuple[int, int, RequestType], _Series] = {}
        for key, pts in raw.items():
            loads = tuple(sorted(pts))
            self._series[key] = _Series(loads, tuple(pts[x] for x in loads))
        self._clocks: dict[tuple[int, RequestType], tuple[int, ...]] = {}
        self._max_loads: dict[tuple[int, float, RequestType, float, float], float] = {}
        for tp, clock, rtype in self._series:
            self._clocks.setdefault((tp, rtype), ())
            self._clocks[(tp, rtype)] = tuple(sorted({*self._clocks[(tp, rtype)], clock}))

    # -- what was measured -------------------------------------------------------------------
    @property
    def tps(self) -> tuple[int, ...]:
        return tuple(sorted({k[0] for k in self._series}))

    @property
    def request_types(self) -> tuple[RequestType, ...]:
        return tuple(sorted({k[2] for k in self._series}))

    def covers(self, tp: int, rtype: RequestType) -> bool:
        """Whether anything was measured for this TP and type."""
        return (tp, rtype) in self._clocks

    def clocks(self, tp: int, rtype: RequestType) -> tuple[int, ...]:
        """Measured SM clocks (MHz) for this TP and type, ascending."""
        try:
            return self._clocks[(tp, rtype)]
        except KeyError:
            raise ProfileRangeError(f"no measurements for TP{tp} {rtype}") from None

    def loads(self, tp: int, clock_mhz: int, rtype: RequestType) -> tuple[float, ...]:
        """Measured loads (req/s) at a measured clock, ascending."""
        try:
            return self._series[(tp, clock_mhz, rtype)].loads
        except KeyError:
            raise ProfileRangeError(f"no measurements for TP{tp} at {clock_mhz} MHz for {rtype}") from None

    def max_measured_load(self, tp: int, clock_mhz: float, rtype: RequestType) -> float:
        lo, hi = self._bracket(tp, clock_mhz, rtype)
        return min(self._series[(tp, lo, rtype)].loads[-1], self._series[(tp, hi, rtype)].loads[-1])

    # -- queries -----------------------------------------------------------------------------
    def lookup(self, tp: int, clock_mhz: float, rtype: RequestType, load_rps: float) -> ProfilePoint:
        """The modelled operating point, interpolated in load and clock."""
        if not math.isfinite(load_rps) or load_rps < 0:
            raise ProfileRangeError(f"load must be a finite number >= 0, got {load_rps!r}")
        lo, hi = self._bracket(tp, clock_mhz, rtype)
        a = self._series[(tp, lo, rtype)].at(load_rps)
        if hi == lo:
            return a
        b = self._series[(tp, hi, rtype)].at(load_rps)
        return _lerp(a, b, (clock_mhz - lo) / (hi - lo))

    def max_load(self, tp: int, clock_mhz: float, rtype: RequestType, slo: SloTargets) -> float:
        """Largest load (req/s) at which P99 TTFT and TBT stay within the SLO; 0.0 if none does (cached:
        the planner and every clock-loop tick ask it again and again)."""
        key = (tp, clock_mhz, rtype, slo.ttft_for(rtype), slo.tbt_p99_s)
        cap = self._max_loads.get(key)
        if cap is None:
            cap = self._max_loads[key] = self._max_load(tp, clock_mhz, rtype, slo)
        return cap

    def _max_load(self, tp: int, clock_mhz: float, rtype: RequestType, slo: SloTargets) -> float:
        """Largest load (req/s) at which P99 TTFT and TBT stay within the SLO; 0.0 if none does.

        Walks the measured loads upward and stops at the first point that misses the SLO, so a
        noisy series never reports a capacity beyond a measured violation; the crossing between
        the last good and first bad point is interpolated.
        """
        lo, hi = self._bracket(tp, clock_mhz, rtype)
        grid = sorted(set(self._series[(tp, lo, rtype)].loads) | set(self._series[(tp, hi, rtype)].loads))
        top = self.max_measured_load(tp, clock_mhz, rtype)
        grid = [x for x in grid if x <= top]
        ttft_max, tbt_max = slo.ttft_for(rtype), slo.tbt_p99_s

        def slack(load: float) -> tuple[float, float]:
            p = self.lookup(tp, clock_mhz, rtype, load)
            return ttft_max - p.ttft_p99_s, tbt_max - p.tbt_p99_s

        prev: float | None = None
        for load in grid:
            if min(slack(load)) < 0:
                if prev is None:
                    return 0.0
                return _crossing(prev, load, slack)
            prev = load
        return top

    def to_document(self) -> dict[str, Any]:
        rows = []
        for (tp, clock, rtype), series in sorted(self._series.items()):
            for load, p in zip(series.loads, series.points, strict=True):
                rows.append([tp, clock, rtype.name, load, p.ttft_p99_s, p.tbt_p99_s, p.power_w])
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "gpu": self.gpu,
            "provenance": self.provenance,
            "columns": list(COLUMNS),
            "rows": rows,
        }

    def _bracket(self, tp: int, clock_mhz: float, rtype: RequestType) -> tuple[int, int]:
        clocks = self.clocks(tp, rtype)
        if not math.isfinite(clock_mhz) or clock_mhz < clocks[0] or clock_mhz > clocks[-1]:
            raise ProfileRangeError(
                f"SM clock {clock_mhz} MHz is outside the measured {clocks[0]}-{clocks[-1]} MHz for TP{tp} {rtype}"
            )
        j = bisect.bisect_left(clocks, clock_mhz)
        if clocks[j] == clock_mhz:
            return clocks[j], clocks[j]
        return clocks[j - 1], clocks[j]


def _crossing(good: float, bad: float, slack: Callable[[float], tuple[float, float]]) -> float:
    """Where the first target is crossed between a good and a bad grid point.

    Each target's slack is linear between neighbouring grid points (every series is linear in load
    there), but their minimum is not: interpolate each target that fails at ``bad`` on its own and
    take the earliest crossing.
    """
    crossings = [
        good + (bad - good) * s_good / (s_good - s_bad)
        for s_good, s_bad in zip(slack(good), slack(bad), strict=True)
        if s_bad < 0
    ]
    return min(crossings)


def _check_row(n: int, row: Any) -> tuple[int, int, RequestType, float, float, float, float]:
    if not isinstance(row, (list, tuple)) or len(row) != len(COLUMNS):
        raise ProfileFormatError(f"row {n}: expected {len(COLUMNS)} values {COLUMNS}, got {row!r}")
    tp, clock, rtype, load, ttft, tbt, power = row
    if not isinstance(tp, int) or isinstance(tp, bool) or tp not in (1, 2, 4, 8):
        raise ProfileFormatError(f"row {n}: tp must be 1, 2, 4 or 8, got {tp!r}")
    if not isinstance(clock, int) or isinstance(clock, bool) or not 100 <= clock <= 5000:
        raise ProfileFormatError(f"row {n}: sm_clock_mhz must be an integer MHz in 100..5000, got {clock!r}")
    try:
        parsed = RequestType.parse(rtype) if isinstance(rtype, str) else None
    except ProfilesError:
        parsed = None
    if parsed is None:
        raise ProfileFormatError(f"row {n}: request_type must be one of SS..LL, got {rtype!r}")
    values = []
    for name, v in zip(COLUMNS[3:], (load, ttft, tbt, power), strict=True):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ProfileFormatError(f"row {n}: {name} must be a finite number >= 0, got {v!r}")
        values.append(float(v))
    if values[0] <= 0 or values[3] <= 0:
        raise ProfileFormatError(f"row {n}: load_rps and power_w must be > 0")
    return tp, clock, parsed, values[0], values[1], values[2], values[3]


def load_profile(source: str | Path | Mapping[str, Any]) -> Profile:
    """Load and validate a profile from a path or an already-parsed document."""
    if isinstance(source, Mapping):
        doc: Any = source
    else:
        try:
            doc = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ProfileFormatError(f"cannot read profile {source}: {exc}") from exc
        except ValueError as exc:
            raise ProfileFormatError(f"profile {source} is not valid JSON: {exc}") from exc
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise ProfileFormatError(f'not a wattgate profile (expected "format": "{FORMAT}")')
    if doc.get("version") != FORMAT_VERSION:
        raise ProfileFormatError(f"profile format version {doc.get('version')!r}, expected {FORMAT_VERSION}")
    if list(doc.get("columns", [])) != list(COLUMNS):
        raise ProfileFormatError(f"profile columns must be {list(COLUMNS)}")
    for key in ("model", "gpu"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ProfileFormatError(f"profile needs a non-empty string {key!r}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise ProfileFormatError("profile 'rows' must be a list")
    return Profile(doc["model"], doc["gpu"], rows, doc.get("provenance"))
