"""``wattgate profile``: measure a profile by sweeping SM clock x load x request type on a running engine.

For each point the profiler locks the SM clock of the instance's GPUs through the GPU seam, drives
requests of one type at the given rate (Poisson or evenly spaced arrivals) for ``warmup_s`` and
then ``duration_s`` more, and records over the measured part:

- P99 TTFT over requests, and P99 over requests of each request's mean time between tokens
  (TPOT, as vLLM's benchmark reports it), from the streamed responses;
- instance power = the GPUs' energy counters' increase / elapsed wall time (summed over GPUs).

Latency comes from client timers (``timing="client"``: measured) or, for the emulator, from the
``wattgate_sim`` timings each response carries (``timing="engine"``: the engine's modelled,
simulated seconds). Under time compression the client timers would multiply event-loop jitter by
the speed, so ``--sim`` defaults to engine timing. Clocks are reset when the sweep ends or fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from wattgate.agent.gpu.base import Gpu, GpuError
from wattgate.profiles.classes import LengthClass, RequestType
from wattgate.profiles.table import Profile

log = logging.getLogger(__name__)
# Representative lengths per class under the default edges (input S <= 408 < M <= 1109 < L;
# output S <= 94 < M <= 371 < L).
INPUT_TOKENS = {LengthClass.S: 200, LengthClass.M: 750, LengthClass.L: 1500}
OUTPUT_TOKENS = {LengthClass.S: 48, LengthClass.M: 200, LengthClass.L: 450}


class ProfilerError(Exception):
    """A sweep that cannot run (bad arguments, unreachable engine, GPU refusing the clock)."""


@dataclass(frozen=True)
class SweepPlan:
    tp: int
    clocks_mhz: tuple[int, ...]
    loads_rps: tuple[float, ...]
    types: tuple[RequestType, ...]
    warmup_s: float = 30.0
    duration_s: float = 60.0
    speed: float = 1.0  # simulated seconds per wall second (1 for a real engine)
    timing: str = "client"
    arrivals: str = "poisson"
    seed: int = 1

    def __post_init__(self) -> None:
        if not (self.clocks_mhz and self.loads_rps and self.types):
            raise ProfilerError("clocks, loads and types must each name at least one value")
        if min(self.loads_rps) <= 0 or self.duration_s <= 0 or self.warmup_s < 0 or self.speed <= 0:
            raise ProfilerError("loads, duration and speed must be > 0 and warmup >= 0")
        if self.timing not in ("client", "engine") or self.arrivals not in ("poisson", "uniform"):
            raise ProfilerError(f"unknown timing {self.timing!r} or arrivals {self.arrivals!r}")


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    tbt_mean_s: float | None


def p99(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), 99))


def _prompt(tokens: int) -> str:
    # "the " is one token in Llama/GPT tokenizers and 4 characters (sim-backend's estimate): N tokens either way
    return "the " * tokens


async def _one_request(client: httpx.AsyncClient, model: str, rtype: RequestType, plan: SweepPlan) -> Sample | None:
    body: dict[str, Any] = {
        "model": model,
        "prompt": _prompt(INPUT_TOKENS[rtype.input]),
        "max_tokens": OUTPUT_TOKENS[rtype.output],
        "ignore_eos": True,  # vLLM: generate exactly max_tokens
    }
    if plan.timing == "engine":  # the engine reports its own timings: no need to time the stream
        resp = await client.post("/v1/completions", json=body)
        if resp.status_code != 200:
            raise ProfilerError(f"engine answered {resp.status_code}: {resp.text[:200]}")
        sim = resp.json().get("wattgate_sim")
        if not isinstance(sim, dict) or sim.get("ttft_s") is None:
            raise ProfilerError("the engine reports no wattgate_sim timings: use --timing client")
        return Sample(float(sim["ttft_s"]), sim.get("tbt_mean_s"))
    return await _timed_stream(client, body, plan.speed)


async def _timed_stream(client: httpx.AsyncClient, body: dict[str, Any], speed: float) -> Sample | None:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t_send = time.monotonic()
    first = last = None
    n = 0
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise ProfilerError(f"engine answered {resp.status_code}: {resp.text[:200]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or ():
                if choice.get("text"):
                    last = time.monotonic()
                    first = first or last
                    n += 1
    if first is None or last is None:
        return None
    tbt = (last - first) / (n - 1) * speed if n > 1 else None
    return Sample((first - t_send) * speed, tbt)


def _arrivals(plan: SweepPlan, load: float, rng: random.Random) -> list[float]:
    """Arrival times in simulated seconds over warmup + duration."""
    end, t, out = plan.warmup_s + plan.duration_s, 0.0, list[float]()
    while True:
        t += rng.expovariate(load) if plan.arrivals == "poisson" else 1.0 / load
        if t >= end:
            return out
        out.append(t)


def _energy_j(gpus: Sequence[Gpu]) -> float:
    try:
        return sum(g.energy_j() for g in gpus)
    except GpuError as exc:
        raise ProfilerError(f"cannot read the GPU energy counters: {exc}") from exc


async def measure_point(
    client: httpx.AsyncClient,
    model: str,
    *,
    gpus: Sequence[Gpu],
    plan: SweepPlan,
    point: tuple[int, float, RequestType],
    rng: random.Random,
) -> list[Any]:
    """One profile row ``[tp, clock, type, load, ttft_p99_s, tbt_p99_s, power_w]``."""
    clock, load, rtype = point
    try:
        for g in gpus:
            g.lock_sm_clock(clock)
    except GpuError as exc:
        raise ProfilerError(f"cannot lock {clock} MHz: {exc}") from exc
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    measured: list[asyncio.Task[Sample | None]] = []
    warm: list[asyncio.Task[Sample | None]] = []
    e0 = w0 = None
    for at in _arrivals(plan, load, rng):
        if e0 is None and at >= plan.warmup_s:
            await asyncio.sleep(max(0.0, t0 + plan.warmup_s / plan.speed - loop.time()))
            e0, w0 = _energy_j(gpus), time.monotonic()
        await asyncio.sleep(max(0.0, t0 + at / plan.speed - loop.time()))
        task = asyncio.create_task(_one_request(client, model, rtype, plan))
        (measured if at >= plan.warmup_s else warm).append(task)
    await asyncio.sleep(max(0.0, t0 + (plan.warmup_s + plan.duration_s) / plan.speed - loop.time()))
    if e0 is None or w0 is None:
        raise ProfilerError(f"no request arrived in the measured {plan.duration_s:g} s at {load:g} req/s")
    elapsed_wall = time.monotonic() - w0
    power = (_energy_j(gpus) - e0) / elapsed_wall
    achieved = len(measured) / (elapsed_wall * plan.speed)
    if abs(achieved - load) > 0.15 * load + 1.0 / plan.duration_s:
        log.warning(
            "drove %.3g req/s instead of %g at %s MHz %s: the client cannot keep up, lower --speed",
            achieved,
            load,
            clock,
            rtype,
        )
    done = await asyncio.gather(*measured, *warm, return_exceptions=True)
    for res in done:
        if isinstance(res, BaseException):
            raise ProfilerError(f"a request failed: {type(res).__name__}: {res}") from res
    samples = [s for s in done[: len(measured)] if isinstance(s, Sample)]
    tbts = [s.tbt_mean_s for s in samples if s.tbt_mean_s is not None]
    if not samples or not tbts:
        raise ProfilerError(f"no complete request measured at {clock} MHz, {load:g} req/s, {rtype}")
    return [plan.tp, clock, rtype.name, load, p99([s.ttft_s for s in samples]), p99(tbts), power]


async def sweep(base_url: str, model: str, gpus: Sequence[Gpu], plan: SweepPlan) -> list[list[Any]]:
    """Every (clock, type, load) point of the plan on one engine instance; clocks reset at the end."""
    rng = random.Random(plan.seed)
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=60.0)
    # no keep-alive: a connection reused just as the server's idle timeout closes it fails the request
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=0)
    rows: list[list[Any]] = []
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
            (await client.get("/v1/models")).raise_for_status()  # connect before the first timed arrival
            for clock in plan.clocks_mhz:
                for rtype in plan.types:
                    for load in plan.loads_rps:
                        rows.append(
                            await measure_point(
                                client, model, gpus=gpus, plan=plan, point=(clock, load, rtype), rng=rng
                            )
                        )
    except httpx.HTTPError as exc:
        raise ProfilerError(f"engine at {base_url} failed: {exc}") from exc
    finally:
        for g in gpus:
            try:
                g.reset_sm_clock()
            except GpuError as exc:
                _warn(f"could not reset the clock of GPU {g.index}: {exc}")
    return rows


def _warn(text: str) -> None:
    log.warning("%s", text)


def build_profile(model: str, gpu: str, rows: list[list[Any]], provenance: dict[str, Any]) -> Profile:
    return Profile(model, gpu, [tuple(r) for r in rows], provenance)
