"""Replays of measurement experiments on the engine model: fixed-length requests at given arrival times (Poisson)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wattgate.servingmodel.engine import Engine


@dataclass(frozen=True)
class Outcome:
    """What a benchmark run reports (latencies in s; power: mean over the run, whole instance, W). Modelled."""

    requests: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    power_w: float
    duration_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    idle_s: float
    comm_s: float = 0.0  # all-reduce seconds (per GPU, summed over steps)
    latency_s: float = 0.0  # latency-bound kernel seconds (``steps.StepTime``)


def poisson_run(
    engine: Engine,
    rate_rps: float,
    requests: int,
    input_tokens: int,
    output_tokens: int,
    *,
    seed: int = 0,
) -> Outcome:
    """Send ``requests`` requests of fixed lengths with exponential gaps at ``rate_rps`` (as vLLM's
    ``benchmark_serving.py`` does) and run the engine until the last one finishes."""
    rng = random.Random(seed)
    t = engine.time_s
    arrivals = []
    for _ in range(requests):
        t += rng.expovariate(rate_rps)
        arrivals.append(t)
    return replay_run(engine, arrivals, input_tokens, output_tokens)


def replay_run(
    engine: Engine,
    arrivals: Sequence[float],
    input_tokens: int,
    output_tokens: int,
    *,
    from_first_arrival: bool = False,
) -> Outcome:
    """Send one request of fixed lengths at each of ``arrivals`` (ascending, engine seconds) and run the
    engine until the last one finishes; power (and ``duration_s``) is the mean from the engine's start, or
    with ``from_first_arrival`` from the first request's arrival, to that finish."""
    if from_first_arrival and arrivals:
        engine.advance(arrivals[0])
    start = engine.time_s
    energy_before, idle_before = engine.totals.energy_j, engine.totals.idle_s
    for i, t in enumerate(arrivals):
        engine.advance(t)
        engine.submit(str(i), input_tokens, output_tokens, t)
    engine.advance(float("inf"), stop_when_idle=True)
    done = engine.pop_finished()
    end = max(f.finish_s for f in done)
    ttft = np.array([f.ttft_s for f in done])
    tpot = np.array([f.tpot_s for f in done if f.tpot_s is not None] or [0.0])
    tot = engine.totals
    energy = engine.totals.energy_j - energy_before
    return Outcome(
        len(done),
        float(ttft.mean()),
        float(np.percentile(ttft, 50)),
        float(np.percentile(ttft, 99)),
        float(tpot.mean()),
        float(np.percentile(tpot, 50)),
        float(np.percentile(tpot, 99)),
        energy / max(end - start, 1e-9),
        end - start,
        tot.compute_s,
        tot.memory_s,
        tot.overhead_s,
        tot.idle_s - idle_before,
        tot.comm_s,
        tot.latency_s,
    )


def mean_outcome(run: Callable[[int], Outcome], seeds: int) -> Outcome:
    """The field-wise mean of ``run(seed)`` over ``seeds`` seeds (short benchmark runs are noisy)."""
    outs = [run(s) for s in range(seeds)]
    fields = Outcome.__dataclass_fields__
    return Outcome(**{name: type(getattr(outs[0], name))(np.mean([getattr(o, name) for o in outs])) for name in fields})
