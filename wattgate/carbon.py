"""Grid carbon intensity (gCO2e per kWh): a constant or an hourly series; the one parser and look-up of every command.

Given as a number (``475``) or as a file of hourly values: numbers separated by newlines, commas or spaces,
``#`` starting a comment. A series is cycled. ``wattgate simulate`` counts its hours from the trace's start
(``at_hour``); the gateway from the wall clock (``at``): hour 0 is Monday 00:00 UTC, so a 24-value file is the
UTC hours of every day (value 0: 00:00-01:00 UTC) and a 168-value file the hours of a week from Monday.
Carbon is always modelled: energy x the intensity given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

_MONDAY_OFFSET_H = 72  # 1970-01-01 was a Thursday: unix hour + 72 counts from Monday 1969-12-29 00:00 UTC


class CarbonError(ValueError):
    """A carbon intensity that is neither a number >= 0 nor a readable file of them (the message says which)."""


@dataclass(frozen=True)
class CarbonIntensity:
    hourly_g_per_kwh: tuple[float, ...]  # one value: a constant
    origin: str = ""  # the file the series came from ("" for a number)

    @property
    def constant(self) -> bool:
        return len(self.hourly_g_per_kwh) == 1

    def at_hour(self, hour: int) -> float:
        """The intensity of hour ``hour`` of the series (cycled)."""
        return self.hourly_g_per_kwh[hour % len(self.hourly_g_per_kwh)]

    def at(self, ts: float) -> float:
        """The intensity at unix time ``ts`` (hour 0 of the series: Monday 00:00 UTC)."""
        return self.at_hour(int(ts // 3600) + _MONDAY_OFFSET_H)

    def grams(self, energy_j: float, ts: float) -> float:
        """gCO2e of ``energy_j`` joules used at unix time ``ts``."""
        return energy_j / 3.6e6 * self.at(ts)

    def show(self) -> str:
        return self.origin or f"{self.hourly_g_per_kwh[0]:g}"


def constant(g_per_kwh: float) -> CarbonIntensity:
    if not (math.isfinite(g_per_kwh) and g_per_kwh >= 0):
        raise CarbonError(f"carbon intensities must be numbers >= 0, got {g_per_kwh!r}")
    return CarbonIntensity((float(g_per_kwh),))


def parse_carbon(spec: object) -> CarbonIntensity:
    """A number (gCO2e/kWh) or the path of a file of hourly numbers; ``CarbonError`` saying what is wrong."""
    if isinstance(spec, CarbonIntensity):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str, Path)):
        raise CarbonError(f"expected a number of gCO2e/kWh or a file of hourly values, got {spec!r}")
    if isinstance(spec, (int, float)):
        return constant(float(spec))
    text = str(spec).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return constant(number)
    path = Path(text).expanduser()
    if not path.is_file():
        raise CarbonError(f"{text!r} is neither a number of gCO2e/kWh nor a file of hourly values (no such file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CarbonError(f"cannot read the carbon series {path}: {exc}") from None
    values: list[float] = []
    for n, line in enumerate(lines, 1):
        for item in line.split("#", 1)[0].replace(",", " ").split():
            try:
                value = float(item)
            except ValueError:
                raise CarbonError(f"{path} line {n}: {item!r} is not a number of gCO2e/kWh") from None
            if not (math.isfinite(value) and value >= 0):
                raise CarbonError(f"{path} line {n}: intensities must be numbers >= 0, got {item!r}")
            values.append(value)
    if not values:
        raise CarbonError(f"{path} holds no intensity (expected one number per hour)")
    return CarbonIntensity(tuple(values), str(path))
