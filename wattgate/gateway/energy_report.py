"""``wattgate report``'s figures: the gateways' attributed-energy minutes summed per model, API key and source.

Rows never mix sources: a model and key served on measured (NVML) and modelled (simulated) GPUs get a row
each. Each model also gets a ``(model total)`` row: its requests' energy plus its idle energy, over its
requests' tokens. Carbon is what the gateways booked (modelled: each second's energy at the intensity configured
for its time, ``energy_carbon_g_per_kwh``), so the report and the carbon metric agree.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wattgate.planner.contract import IDLE_KEY, ContractError, parse_energy_field

TOTAL_KEY = "(model total)"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReportError(ValueError):
    """A bad report argument (a duration that is not N[s|m|h|d])."""


def parse_duration_s(text: str) -> float:
    m = _DURATION.match(text.strip())
    if m is None:
        raise ReportError(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class ReportRow:
    model: str
    key: str
    source: str  # measured | modelled: where the joules come from
    energy_j: float
    tokens: int
    requests: int
    carbon_g: float  # modelled: as the gateways booked it, at their configured intensity
    local_j: float = 0.0  # of energy_j, split by a replica over its own requests alone while Redis was away

    @property
    def j_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens else None


def aggregate(minutes: Iterable[Mapping[str, str]]) -> list[ReportRow]:
    """Sum the minute hashes per (model, key, source); fields that do not parse are skipped."""
    sums: dict[tuple[str, str, str], list[float]] = {}
    index = {"joules": 0, "tokens": 1, "requests": 2, "carbon_g": 3, "local_j": 4}
    for minute in minutes:
        for raw, value in minute.items():
            try:
                name, model, key, _pool, _status, source = parse_energy_field(raw)
                number = float(value)
            except (ContractError, ValueError):
                continue
            for k in (key, TOTAL_KEY):
                cell = sums.setdefault((model, k, source), [0.0, 0.0, 0.0, 0.0, 0.0])
                cell[index[name]] += number
    rows = [ReportRow(m, k, src, j, int(t), int(n), g, loc) for (m, k, src), (j, t, n, g, loc) in sums.items()]
    return sorted(rows, key=lambda r: (r.model, r.source, r.key == TOTAL_KEY, r.key == IDLE_KEY, r.key))


_COLUMNS = ("model", "key", "source", "energy_j", "tokens", "requests", "j_per_token", "carbon_g", "local_split_j")


def _cells(r: ReportRow) -> tuple[str, ...]:
    jpt = "" if r.j_per_token is None else f"{r.j_per_token:.4f}"
    return (r.model, r.key, r.source, f"{r.energy_j:.3f}", str(r.tokens), str(r.requests), jpt, f"{r.carbon_g:.4f}")


def to_csv(rows: Iterable[ReportRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_COLUMNS)
    for r in rows:
        w.writerow((*_cells(r), f"{r.local_j:.3f}"))
    return out.getvalue()


def to_table(rows: list[ReportRow]) -> str:
    head = ("model", "key", "source", "energy J", "tokens", "requests", "J/token", "gCO2e")
    body = [_cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in (head, *body)]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        "energy: the source column (measured: NVML counters; modelled: simulated GPUs); carbon: modelled, each "
        f"second's energy at the gateways' configured intensity for its time; '{IDLE_KEY}': instances' energy "
        "while no request ran"
    )
    local = sum(r.local_j for r in rows if r.key != TOTAL_KEY)
    if local > 0:
        lines.append(
            f"{local:.3f} J of these were split by a gateway replica over its own requests alone while Redis was "
            "away: other replicas may have booked the same seconds (CSV: local_split_j)"
        )
    return "\n".join(lines)
