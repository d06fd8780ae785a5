"""The planner's profile, derived from the serving model: P99 TTFT, P99 TBT and power per (TP, clock, type, load).

DESIGN.md: the profile is the planner's table; for emulation and replay it is derived from the
serving model, so that the plan and the replay that judges it agree. Each row is a steady-state run
of one engine: Poisson arrivals of one request type at one load for ``duration_s`` after a
``warmup_s`` that is not counted, lengths drawn from a trace's requests of that type's input class
(input tokens) and output class (output tokens). ``ttft_p99_s`` is the P99 over requests of the
time to first token, ``tbt_p99_s`` the P99 over requests of the time per output token after the
first, ``power_w`` the instance's mean power. Loads rise until the P99 TTFT passes
``stop_factor`` times the type's target, so every series crosses its SLO capacity. Everything is
modelled.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wattgate.profiles.classes import REQUEST_TYPES, ClassEdges, LengthClass, RequestType, SloTargets
from wattgate.profiles.table import COLUMNS, FORMAT, FORMAT_VERSION, Profile, load_profile
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.errors import ServingModelError

CLOCKS_MHZ = (800, 1000, 1200, 1400, 1600, 1800, 1980)
LOADS_RPS = (
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    7.0,
    8.0,
    10.0,
    12.0,
    14.0,
    16.0,
    20.0,
    24.0,
    28.0,
    32.0,
    40.0,
    48.0,
    64.0,
    80.0,
    96.0,
    128.0,
)


@dataclass(frozen=True)
class LengthPools:
    """Token counts to draw from per class: inputs by input class, outputs by output class."""

    inputs: dict[LengthClass, tuple[int, ...]]
    outputs: dict[LengthClass, tuple[int, ...]]

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[int, int]], edges: ClassEdges) -> LengthPools:
        ins: dict[LengthClass, list[int]] = {c: [] for c in LengthClass}
        outs: dict[LengthClass, list[int]] = {c: [] for c in LengthClass}
        for i, o in pairs:
            if i >= 1 and o >= 1:
                ins[edges.input_class(i)].append(i)
                outs[edges.output_class(o)].append(o)
        if any(not v for v in (*ins.values(), *outs.values())):
            raise ServingModelError("every input and output class needs at least one request")
        return cls({c: tuple(v) for c, v in ins.items()}, {c: tuple(v) for c, v in outs.items()})

    def draw(self, rtype: RequestType, rng: random.Random) -> tuple[int, int]:
        return rng.choice(self.inputs[rtype.input]), rng.choice(self.outputs[rtype.output])


@dataclass(frozen=True)
class PointSettings:
    warmup_s: float = 30.0
    duration_s: float = 180.0  # measured, unless that holds more than max_requests
    min_requests: int = 200
    max_requests: int = 1500
    seed: int = 0


def steady_point(  # noqa: PLR0917  (one row's coordinates, in the profile's column order)
    model: ServingModel,
    tp: int,
    clock_mhz: int,
    rtype: RequestType,
    load_rps: float,
    lengths: LengthPools,
    s: PointSettings = PointSettings(),
) -> tuple[float, float, float]:
    """(P99 TTFT s, P99 TPOT s, mean instance power W) of one steady run (see the module docstring)."""
    # Common random numbers: every TP and clock sees the same arrivals and lengths at a (type, load), so rows
    # differ by the configuration, not by the sample. A string seed: random seeds it through SHA-512, the same
    # in every process (hash() of a str is salted).
    rng = random.Random(f"{s.seed}:{rtype.name}:{load_rps:g}")
    engine = model.engine(tp, clock_mhz=clock_mhz)
    horizon = max(min(s.duration_s, s.max_requests / load_rps), s.min_requests / load_rps)
    t, n, counted = 0.0, 0, 0
    cap = engine.max_request_tokens
    while t < s.warmup_s + horizon:
        t += rng.expovariate(load_rps)
        engine.advance(t)
        i, o = lengths.draw(rtype, rng)
        if i + o > cap:
            continue  # longer than the instance's whole cache: vLLM rejects it
        engine.submit(str(n), i, o, t)
        n += 1
    e0 = engine.energy_j_at(s.warmup_s) if engine.time_s <= s.warmup_s else None
    end = s.warmup_s + horizon
    engine.advance(end)
    done = [f for f in engine.pop_finished() if f.arrival_s >= s.warmup_s]
    counted = len(done)
    pending = [r for r in engine.requests() if r.arrival_s >= s.warmup_s and r.first_token_s is None]
    ttft = [f.ttft_s for f in done] + [end - r.arrival_s for r in pending]  # unserved: at least this long
    tpot = [f.tpot_s for f in done if f.tpot_s is not None]
    if not ttft or counted == 0:
        raise ServingModelError(f"no request finished at TP{tp} {clock_mhz} MHz {rtype} {load_rps} req/s")
    energy = engine.energy_j_at(end) - (e0 if e0 is not None else 0.0)
    span = end - (s.warmup_s if e0 is not None else 0.0)
    return (
        float(np.percentile(ttft, 99)),
        float(np.percentile(tpot, 99)) if tpot else 0.0,
        energy / span,
    )


def build_profile(
    model: ServingModel,
    lengths: LengthPools,
    *,
    tps: Sequence[int] = (2, 4, 8),
    clocks_mhz: Sequence[int] = CLOCKS_MHZ,
    types: Sequence[RequestType] = REQUEST_TYPES,
    loads_rps: Sequence[float] = LOADS_RPS,
    slo: SloTargets | None = None,
    stop_factor: float = 3.0,
    settings: PointSettings = PointSettings(),
    provenance: dict[str, object] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Profile:
    """Every (TP, clock, type) series, loads rising until P99 TTFT passes ``stop_factor`` x its target."""
    slo = slo or SloTargets()
    rows: list[list[object]] = []
    for tp in tps:
        for clock in clocks_mhz:
            for t in types:
                limit = stop_factor * slo.ttft_for(t)
                for load in loads_rps:
                    ttft, tbt, power = steady_point(model, tp, clock, t, load, lengths, settings)
                    rows.append([tp, clock, t.name, load, round(ttft, 6), round(tbt, 6), round(power, 1)])
                    if ttft > limit or tbt > stop_factor * slo.tbt_p99_s:
                        break
                log(f"TP{tp} {clock} MHz {t}: {bisect.bisect(loads_rps, load)} loads up to {load} req/s")
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.arch.name,
        "gpu": model.calibration.gpu,
        "provenance": provenance or {},
        "columns": list(COLUMNS),
        "rows": rows,
    }
    return load_profile(doc)
