"""Workloads: the Azure trace CSV, wattgate's observation log, time and load scaling, a diurnal day by tiling."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wattgate.planner.contract import ContractError, Observation


class SimulateError(Exception):
    """Base exception of the simulate package (bad trace, bad option, unusable profile)."""


@dataclass(frozen=True, order=True)
class Request:
    """One request of a workload: arrival (s from the workload start) and true token counts."""

    arrival_s: float
    input_tokens: int
    output_tokens: int


def load_trace(path: str | Path) -> list[Request]:
    """An Azure-format CSV (TIMESTAMP, ContextTokens, GeneratedTokens) or a JSONL observation log."""
    p = Path(path)
    if not p.is_file():
        raise SimulateError(f"trace {path} does not exist or is not a file")
    if p.suffix in (".jsonl", ".ndjson") or p.read_bytes()[:1] == b"{":
        return load_observations(p)
    return load_azure_csv(p)


def load_azure_csv(path: Path) -> list[Request]:
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        want = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
        if tuple(header[:3]) != want:
            raise SimulateError(f"{path}: expected the columns {', '.join(want)}, got {header!r}")
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                ts = _parse_ts(row[0].strip())
                rows.append((ts, int(row[1]), int(row[2])))
            except (ValueError, IndexError) as exc:
                raise SimulateError(f"{path} line {n}: bad row {row!r} ({exc})") from exc
    return _normalise(rows, str(path))


def _parse_ts(text: str) -> float:
    # Azure writes 7 fractional digits (100 ns); datetime takes at most 6.
    head, _, frac = text.partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)  # no zone: any fixed one will do
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def load_observations(path: Path) -> list[Request]:
    """wattgate's own log: one ``Observation.to_json()`` per line, status 200 only. ``ts`` is when the
    request finished; its arrival is ``ts`` less its TTFT and its streaming time (TBT x tokens)."""
    rows: list[tuple[float, int, int]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obs = Observation.from_json(line)
            except (ContractError, ValueError) as exc:
                raise SimulateError(f"{path} line {n}: not an observation ({exc})") from exc
            if obs.status == 200:
                took = (obs.ttft_s or 0.0) + (obs.tbt_s or 0.0) * max(obs.output_tokens - 1, 0)
                rows.append((obs.ts - took, obs.input_tokens, max(obs.output_tokens, 1)))
    return _normalise(rows, str(path))


def _normalise(rows: list[tuple[float, int, int]], name: str) -> list[Request]:
    if not rows:
        raise SimulateError(f"{name}: no requests")
    t0 = min(r[0] for r in rows)
    out = [Request(ts - t0, max(i, 1), max(o, 1)) for ts, i, o in rows if i >= 0 and o >= 0]
    out.sort()
    return out


def speed(requests: Sequence[Request], factor: float) -> list[Request]:
    """Time scaling: ``factor`` 2 replays the same requests in half the time."""
    if not factor > 0 or not math.isfinite(factor):
        raise SimulateError(f"--speed must be a positive number, got {factor}")
    return [Request(r.arrival_s / factor, r.input_tokens, r.output_tokens) for r in requests]


def scale(requests: Sequence[Request], factor: float, seed: int = 0) -> list[Request]:
    """Load scaling: every request kept ``floor(factor)`` times plus once more with the fractional
    probability; copies are shifted by a random offset within the workload so bursts are not copied."""
    if factor < 0 or not math.isfinite(factor):
        raise SimulateError(f"--scale must be a number >= 0, got {factor}")
    rng = random.Random(seed)
    span = max((r.arrival_s for r in requests), default=0.0) + 1.0
    out: list[Request] = []
    whole, frac = int(factor), factor - int(factor)
    for r in requests:
        copies = whole + (1 if rng.random() < frac else 0)
        for k in range(copies):
            t = r.arrival_s if k == 0 else (r.arrival_s + rng.random() * span) % span
            out.append(Request(t, r.input_tokens, r.output_tokens))
    out.sort()
    return out


def diurnal_factor(hour: float, low: float = 0.35) -> float:
    """A daily load shape from 1.0 (peak, 14:00) to ``low`` (02:00): a cosine, like interactive traffic."""
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(2.0 * math.pi * (hour - 14.0) / 24.0))


def tile_days(requests: Sequence[Request], days: float, low: float = 0.35, seed: int = 0) -> list[Request]:
    """A longer workload from a short one: the trace tiled hour after hour, each hour scaled by the
    diurnal factor of its time of day (the trace itself counts as the daily peak)."""
    if not days > 0:
        raise SimulateError(f"--days must be > 0, got {days}")
    span = max((r.arrival_s for r in requests), default=0.0) + 1e-3
    span = max(span, 1.0)
    hours = math.ceil(days * 24 * 3600 / span)
    out: list[Request] = []
    for h in range(hours):
        offset = h * span
        factor = diurnal_factor((offset / 3600.0) % 24.0, low)
        for r in scale(requests, factor, seed=seed + h):
            out.append(Request(r.arrival_s + offset, r.input_tokens, r.output_tokens))
    limit = days * 24 * 3600
    return [r for r in out if r.arrival_s < limit]
