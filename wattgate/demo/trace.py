"""Read an Azure LLM inference trace and turn it into the demo's send schedule (compressed, thinned)."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from wattgate.profiles.classes import ClassEdges, RequestType

EXCERPT = "conv_excerpt.csv"


class TraceError(Exception):
    """The trace file is missing, unreadable or not in the Azure format."""


@dataclass(frozen=True)
class TraceRow:
    at_s: float  # seconds since the trace's first request
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Scheduled:
    send_at_s: float  # wall seconds after the replay starts
    trace_at_s: float
    input_tokens: int
    output_tokens: int
    rtype: RequestType


def read_trace(path: Path | None) -> list[TraceRow]:
    """The rows of ``path`` (the shipped excerpt when None), sorted by time."""
    try:
        source = resources.files("wattgate.demo") / "data" / EXCERPT if path is None else path
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise TraceError(f"trace {path or EXCERPT}: expected columns {', '.join(sorted(need))}")
    rows: list[tuple[datetime, int, int]] = []
    for n, r in enumerate(reader, start=2):
        try:
            ts = datetime.fromisoformat(r["TIMESTAMP"].strip()[:26])
            rows.append((ts, max(1, int(r["ContextTokens"])), max(1, int(r["GeneratedTokens"]))))
        except (ValueError, TypeError) as exc:
            raise TraceError(f"trace {path or EXCERPT}, line {n}: {exc}") from exc
    if not rows:
        raise TraceError(f"trace {path or EXCERPT} has no requests")
    rows.sort(key=lambda x: x[0])
    t0 = rows[0][0]
    return [TraceRow((ts - t0).total_seconds(), i, o) for ts, i, o in rows]


def schedule(
    rows: list[TraceRow],
    duration_s: float,
    speed: float,
    edges: ClassEdges,
    *,
    max_output_tokens: int | None = None,
    seed: int = 0,
    load_fraction: float = 1.0,
) -> list[Scheduled]:
    """``duration_s × speed`` trace seconds played in ``duration_s`` wall seconds, one request in ``speed`` kept.

    Keeping one in ``speed`` holds the arrival rate at the trace's own rate, so the planner, the clock
    loop and the emulated engines (which all work in wall time) see the load the trace had, while the
    demo walks through ``speed`` times more of its time-varying shape. ``load_fraction`` scales the rate
    down further (a small cluster cannot carry a whole production trace). A trace shorter than that wraps.
    """
    span = rows[-1].at_s + 1.0
    rng = random.Random(seed)
    keep = load_fraction / speed
    out: list[Scheduled] = []
    offset = 0.0
    while offset < duration_s * speed:
        for r in rows:
            t = offset + r.at_s
            if t >= duration_s * speed:
                break
            if rng.random() >= keep:
                continue
            output = min(r.output_tokens, max_output_tokens) if max_output_tokens else r.output_tokens
            out.append(Scheduled(t / speed, t, r.input_tokens, output, edges.request_type(r.input_tokens, output)))
        offset += span
    return out
