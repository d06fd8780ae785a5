"""Fitting the serving model's free numbers to measurements (build time: ``scripts/calibrate_serving_model.py``).

Three fits, each on data the validation (``validate.py``) does not judge it by:

1. **Engine overheads of vLLM V1** (``fit_vllm_overheads``): per step, per scheduled sequence, per
   layer and per request, on the vLLM benchmark curves of Llama-3.2-1B, 3.2-3B and 3.1-8B on H100
   (TP8, 1024/350 tokens), below each curve's knee. Small models are almost all overhead, which is
   what pins these numbers down; the 70B curve is kept for validation.
2. **SM-clock law and the characterization engine** (``fit_clock_law``, ``fit_kernel_scale``,
   ``fit_kv_reserve``): how compute-, memory- and latency-bound step time grow at lower clocks (the
   compute exponent and the memory knee), on the characterization's P99 TTFT and time between tokens
   per clock; the kernel speed, per-request latency and KV reserve of the DynamoLLM prototype's engine
   (vLLM V0 of 2024), on its P99 TTFT.
3. **Power model** (``fit_power``): per-GPU idle, compute-, memory- and all-reduce-bound power and their
   clock exponents, least squares on the characterization's instance power given each row's modelled
   busy time, each busy state capped at the board's 700 W.

Every fit minimises squared log errors (relative errors, symmetric in over/under-estimation) and
uses common random numbers (fixed seeds), so the objective is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wattgate.servingmodel.calibration import Calibration, ServingModel
from wattgate.servingmodel.experiments import Outcome, mean_outcome, poisson_run, replay_run
from wattgate.servingmodel.measured import BenchPoint, CharPoint, read_benchmark, read_characterization_tbt
from wattgate.servingmodel.power import BOARD_LIMIT_W, EMPTY_GPU_W, PowerModel
from wattgate.servingmodel.steps import ClockLaw, EngineOverheads

FIT_MODELS = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")
VALIDATION_MODEL = "llama-3.1-70b"
KNEE_FACTOR = 3.0  # a rate is past the knee once its P99 TTFT is this many times the lowest rate's
BENCH_REQUESTS_PER_RATE_S = 20  # the benchmark sends 20 s worth of requests at each rate
BENCH_GPU_MEMORY_UTILIZATION = 0.95  # the benchmark's `vllm serve --gpu-memory-utilization`


def below_knee(points: Sequence[BenchPoint]) -> list[BenchPoint]:
    """The rates before the curve's knee: every rate up to (not including) the first whose measured
    P99 TTFT exceeds ``KNEE_FACTOR`` times that of the lowest rate."""
    base = min(points, key=lambda p: p.rate_rps).ttft_p99_s
    out = []
    for p in sorted(points, key=lambda p: p.rate_rps):
        if p.ttft_p99_s > KNEE_FACTOR * base:
            break
        out.append(p)
    return out


def knee_rate(points: Sequence[BenchPoint]) -> float | None:
    """The first rate past the knee (see ``below_knee``), or None when the curve has none."""
    ok = below_knee(points)
    later = sorted({p.rate_rps for p in points} - {p.rate_rps for p in ok})
    return later[0] if later else None


def bench_outcome(model: ServingModel, p: BenchPoint, seeds: int = 1, first_seed: int = 0) -> Outcome:
    """The modelled benchmark at one rate: ``20 x rate`` Poisson requests of the point's lengths."""
    n = max(round(BENCH_REQUESTS_PER_RATE_S * p.rate_rps), 1)

    def run(seed: int) -> Outcome:
        engine = model.engine(p.tp, gpu_memory_utilization=BENCH_GPU_MEMORY_UTILIZATION)
        return poisson_run(engine, p.rate_rps, n, p.input_tokens, p.output_tokens, seed=first_seed + seed)

    return mean_outcome(run, seeds)


def _sq_log(a: float, b: float) -> float:
    return math.log(max(a, 1e-9) / max(b, 1e-9)) ** 2


@dataclass(frozen=True)
class FitResult:
    value: object
    rms_log_error: float
    evaluations: int
    points: int


def fit_vllm_overheads(
    calibration: Calibration,
    profiles_dir: Path,
    *,
    engine: str = "vllm-v1",
    models: Sequence[str] = FIT_MODELS,
    rates_per_model: int = 5,
    max_evaluations: int = 120,
    log: Callable[[str], None] = lambda _: None,
) -> FitResult:
    """Engine overheads of vLLM V1 from the small models' benchmark curves (mean TTFT and mean TPOT)."""
    points: list[BenchPoint] = []
    for m in models:
        ok = below_knee(read_benchmark(profiles_dir, m))
        idx = np.unique(np.linspace(0, len(ok) - 1, rates_per_model).round().astype(int))
        points += [ok[i] for i in idx]
    # a starting point read off the curves by hand: the 1B model's TPOT at 2 req/s (~1.8 ms against
    # ~0.7 ms of kernels), its rise with the batch, the growth from 16 to 32 layers, the TTFT floor
    start = np.log([3e-4, 2e-5, 3e-5, 1.2e-2])  # step, per sequence, per layer, per request (s); fitted in logs

    def overheads(x: np.ndarray) -> EngineOverheads:
        step, seq, layer, req = np.exp(x).tolist()
        return EngineOverheads(step_s=step, sequence_s=seq, layer_s=layer, request_s=req)

    evals = 0

    def loss(x: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        cal = _with_overheads(calibration, engine, overheads(x))
        err = 0.0
        for p in points:
            o = bench_outcome(ServingModel(p.model, engine, cal), p)
            err += _sq_log(o.ttft_mean_s, p.ttft_mean_s) + _sq_log(o.tpot_mean_s, p.tpot_mean_s)
        value = err / (2 * len(points))
        log(f"overheads {overheads(x)} -> rms log error {math.sqrt(value):.4f}")
        return value

    from scipy.optimize import minimize  # type: ignore[import-untyped]  # noqa: PLC0415  (build time only)

    simplex = np.array([start] + [start + np.log(2.0) * np.eye(4)[i] for i in range(4)])
    res = minimize(
        loss,
        start,
        method="Nelder-Mead",
        options={"maxfev": max_evaluations, "initial_simplex": simplex, "xatol": 0.02},
    )
    return FitResult(overheads(res.x), math.sqrt(float(res.fun)), evals, len(points))


def _with_overheads(calibration: Calibration, engine: str, overheads: EngineOverheads) -> Calibration:
    e = dataclasses.replace(calibration.engines[engine], overheads=overheads)
    return dataclasses.replace(calibration, engines={**calibration.engines, engine: e})


def char_outcome(model: ServingModel, p: CharPoint) -> Outcome:
    """The modelled characterization point: its benchmark's own arrivals (``CharPoint.arrivals``: the same
    seeded Poisson draw the prototype sent) of the type's lengths, on one engine at the point's clock. Power
    is averaged from the first arrival to the last completion, as the prototype's analysis did: it cut each
    run's DCGM samples from the first one above 140 W to the last one above before 8 s of idle
    (``trace_shard_level_over_time.py``), so the idle wait before the first request is not in it."""
    engine = model.engine(p.tp, clock_mhz=p.clock_mhz)
    return replay_run(engine, p.arrivals(), p.input_tokens, p.output_tokens, from_first_arrival=True)


# An H100 SXM board draws at most 700 W (``power.BOARD_LIMIT_W``): the power model caps every state there
# (its power brake lowers the clock). Below the cap each busy figure is what that work would draw above
# idle at the top clock without the limit, up to twice the limit. An engine with nothing to run draws at
# least what a board that holds no instance does (``EMPTY_GPU_W``) and at most 150 W.
POWER_BOUNDS_W = {
    "idle_w": (EMPTY_GPU_W, 150.0),
    "idle_clock_w": (0.0, 100.0),
    "compute_w": (0.0, 2 * BOARD_LIMIT_W),
    "memory_w": (0.0, 2 * BOARD_LIMIT_W),
    "comm_w": (0.0, 2 * BOARD_LIMIT_W),
    "latency_w": (0.0, 2 * BOARD_LIMIT_W),
}


def _capped_power(x: np.ndarray, clock: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: idle watts, each busy kind's watts above idle (capped at the board limit) and where capped,
    for the watt figures ``x`` (``POWER_BOUNDS_W``'s order) and each row's clock factors (g, g, gm, gm, gm)."""
    idle = x[0] + x[1] * clock[:, 0]
    room = (BOARD_LIMIT_W - idle)[:, None]
    demand = x[2:] * clock[:, 1:]
    capped = demand >= room
    return idle, np.where(capped, room, demand), capped


def _power_residuals(x: np.ndarray, clock: np.ndarray, frac: np.ndarray, measured: np.ndarray) -> np.ndarray:
    idle, busy, _ = _capped_power(x, clock)
    out: np.ndarray = (idle + (frac * busy).sum(axis=1)) / measured - 1.0
    return out


def _power_jacobian(x: np.ndarray, clock: np.ndarray, frac: np.ndarray, measured: np.ndarray) -> np.ndarray:
    _, _, capped = _capped_power(x, clock)
    idle_share = 1.0 - (frac * capped).sum(axis=1)  # a capped state's watts fall as idle rises
    cols = np.column_stack([idle_share, idle_share * clock[:, 0], frac * clock[:, 1:] * ~capped])
    out: np.ndarray = cols / measured[:, None]
    return out


def fit_power(rows: Sequence[tuple[CharPoint, Outcome]], max_clock_mhz: int) -> FitResult:
    """Least squares of relative errors of instance power over the rows, given each row's modelled busy
    seconds: the clock exponents on a grid, the six watt figures within ``POWER_BOUNDS_W``, each busy
    state capped at the board limit (``power.PowerModel``: ``min(idle + figure x clock factor, 700 W)``)."""
    from scipy.optimize import least_squares  # noqa: PLC0415  (build time only)

    r = np.array([p.clock_mhz / max_clock_mhz for p, _ in rows])
    measured = np.array([p.power_w / p.tp for p, _ in rows])
    # busy seconds over the run's duration, per kind: compute, memory, all-reduce, latency-bound
    frac = np.array([[o.compute_s, o.memory_s, o.comm_s, o.latency_s] for _, o in rows])
    frac /= np.array([[o.duration_s] for _, o in rows])
    lo, hi = np.array(list(POWER_BOUNDS_W.values())).T
    # below the limit everywhere, and compute power past it at the top clocks: the objective is piecewise
    starts = [np.array([100.0, 10.0, 400.0, 300.0, 50.0, 50.0]), np.array([100.0, 10.0, 900.0, 450.0, 50.0, 50.0])]
    best: tuple[float, PowerModel] | None = None
    evals = 0
    for gamma in np.arange(1.0, 3.51, 0.25):  # dynamic power C V^2 f: at least linear in the clock
        for gamma_m in np.arange(0.0, 2.01, 0.25):
            g, gm = r**gamma, r**gamma_m
            clock = np.column_stack([g, g, gm, gm, gm])
            for x0 in starts:
                res = least_squares(
                    _power_residuals,
                    np.clip(x0, lo, hi),
                    jac=_power_jacobian,
                    bounds=(lo, hi),
                    args=(clock, frac, measured),
                    x_scale=100.0,
                )
                evals += 1
                err = float(np.mean(res.fun**2))
                if best is None or err < best[0]:
                    w = [round(float(x), 6) for x in res.x]  # no 1e-14 W figures in the calibration
                    best = (
                        err,
                        PowerModel(w[0], w[1], w[2], w[3], float(gamma), float(gamma_m), max_clock_mhz, w[4], w[5]),
                    )
    assert best is not None
    return FitResult(best[1], math.sqrt(best[0]), evals, len(rows))


# The clock-law grid: the compute exponent and the memory knee are fitted; memory-bound time below the knee and
# latency-bound time grow as 1/f (exponents 1): a kernel that cannot keep HBM busy is limited by how fast the SMs
# issue loads, and a fixed number of cycles takes 1/f (see ``steps``; the characterization's TBT per clock fits
# exponent 1 for latency-bound time better than 0.5 or 0.75, README *Calibration*).
COMPUTE_EXPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MEMORY_KNEES_MHZ = (1000.0, 1100.0, 1200.0, 1300.0, 1400.0, 1500.0, 1600.0, 1700.0)


def clock_law_grid(
    max_clock_mhz: int,
    compute_exps: Sequence[float] = COMPUTE_EXPS,
    knees_mhz: Sequence[float] = MEMORY_KNEES_MHZ,
) -> list[ClockLaw]:
    """The clock laws ``fit_clock_law`` searches (memory and latency exponents 1)."""
    return [ClockLaw(float(ce), 1.0, max_clock_mhz, float(k), 1.0) for ce in compute_exps for k in knees_mhz]


def law_label(law: ClockLaw) -> str:
    """A clock law in a few characters: compute exponent / memory knee (MHz) where it has one, else
    compute / memory exponent."""
    if law.memory_knee_mhz:
        return f"{law.compute_exp:g}/{law.memory_knee_mhz:.0f} MHz"
    return f"{law.compute_exp:g}/{law.memory_exp:g}"


@dataclass(frozen=True)
class LawReplay:
    """Modelled engine-side P99 TTFT (no per-request latency) and P50 time per output token (s) of each point
    under one clock law."""

    ttft_s: list[float]
    tbt_s: list[float]


def measured_tbt(points: Sequence[CharPoint], tbt: dict[tuple[int, int, str, float], float]) -> list[float]:
    """Each point's measured time between tokens (``measured.read_characterization_tbt``), NaN where none or
    where it does not measure decode steps: a long-prompt (L) request produced 11 tokens, so its TBT (the
    90th percentile of 11 gaps) is set by the other requests' 4,085-token prefills that V0 runs between its
    decode steps, which the modelled mean time per output token weighs differently (at TP2 the modelled
    ratio between clocks reads 2-3x the measured one)."""
    return [
        math.nan if p.rtype.input.value == "L" else tbt.get((p.tp, p.clock_mhz, p.rtype.name, p.load_rps), math.nan)
        for p in points
    ]


def fit_clock_law(
    calibration: Calibration,
    points: Sequence[CharPoint],
    *,
    engine: str,
    arch: str = "llama-2-70b",
    laws: Sequence[ClockLaw] | None = None,
    tbt: Sequence[float] | None = None,
    request_s: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[FitResult, dict[ClockLaw, LawReplay]]:
    """The clock law (of ``laws``, by default ``clock_law_grid``) that best reproduces how P99 TTFT and the
    time between tokens grow as the clock falls.

    Judged on ratios: each point's TTFT (and TBT) over that of the same (TP, type, load) at the highest clock
    measured (``clock_law_error``), which leaves out what the ratios cancel: how fast the prototype's
    engine was in absolute terms. TTFT is mostly prefill (compute-bound), TBT decode (memory- and
    latency-bound): together they pin both sides of the law. ``tbt`` is each point's measured TBT (NaN
    where none; by default ``measured.read_characterization_tbt``). The engine's per-request latency (a
    constant in every TTFT, which dilutes the ratios) is ``request_s`` where given (``fit_kernel_scale`` fits
    it on absolute TTFTs) or fitted with each law. Returns the fit and every law's replay (for reuse by the
    leave-one-clock-out validation)."""
    laws = laws if laws is not None else clock_law_grid(calibration.clock_law.max_clock_mhz)
    tbt = list(tbt) if tbt is not None else measured_tbt(points, read_characterization_tbt())
    best: tuple[float, ClockLaw, float] | None = None
    table: dict[ClockLaw, LawReplay] = {}
    measured = [p.ttft_p99_s for p in points]
    for law in laws:
        cal = dataclasses.replace(calibration, clock_law=law)
        cal = _with_overheads(cal, engine, dataclasses.replace(cal.engines[engine].overheads, request_s=0.0))
        model = ServingModel(arch, engine, cal)
        outcomes = [char_outcome(model, p) for p in points]
        replay = table[law] = LawReplay([o.ttft_p99_s for o in outcomes], [o.tpot_p50_s for o in outcomes])
        if request_s is None:
            req, err = best_clock_law_offset(points, replay, measured, tbt)
        else:
            req, err = request_s, clock_law_error(points, replay, measured, tbt, request_s)
        log(
            f"clock law {law_label(law)}: request latency {req * 1e3:.1f} ms, "
            f"rms log ratio error {math.sqrt(err):.4f} (TTFT and TBT)"
        )
        if best is None or err < best[0]:
            best = (err, law, req)
    assert best is not None
    return FitResult((best[1], best[2]), math.sqrt(best[0]), len(table), len(points)), table


def tbt_ratio_terms(
    points: Sequence[CharPoint],
    modelled: Sequence[float],
    measured: Sequence[float],
    exclude_clock: int | None = None,
) -> np.ndarray:
    """Squared log errors of the TBT ratios (each point over the same TP, type and load at the highest other
    clock, ``ratio_pairs``), for the pairs whose both points have a measured TBT."""
    e, m = np.array(modelled), np.array(measured)
    pairs = [(i, r) for i, r in ratio_pairs(points, exclude_clock) if not (math.isnan(m[i]) or math.isnan(m[r]))]
    if not pairs:
        return np.zeros(0)
    i, ref = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    terms: np.ndarray = (np.log(e[i] / e[ref]) - np.log(m[i] / m[ref])) ** 2
    return terms


def clock_law_error(
    points: Sequence[CharPoint],
    replay: LawReplay,
    measured_ttft: Sequence[float],
    measured_tbt: Sequence[float],
    request_s: float,
    *,
    exclude_clock: int | None = None,
) -> float:
    """The mean squared log error over every TTFT ratio (``request_s`` added to each modelled TTFT) and every
    TBT ratio (``tbt_ratio_terms``), pooled."""
    n = len(ratio_pairs(points, exclude_clock))
    ttft = ratio_error(points, replay.ttft_s, measured_ttft, request_s, exclude_clock) * n
    terms = tbt_ratio_terms(points, replay.tbt_s, measured_tbt, exclude_clock)
    return float((ttft + terms.sum()) / max(n + len(terms), 1))


def best_clock_law_offset(
    points: Sequence[CharPoint],
    replay: LawReplay,
    measured_ttft: Sequence[float],
    measured_tbt: Sequence[float],
    exclude_clock: int | None = None,
) -> tuple[float, float]:
    """The per-request latency that best reproduces the TTFT ratios (``best_ratio_offset``; TBT does not
    contain it) and the pooled error it leaves (``clock_law_error``)."""
    req, _ = best_ratio_offset(points, replay.ttft_s, measured_ttft, exclude_clock)
    return req, clock_law_error(points, replay, measured_ttft, measured_tbt, req, exclude_clock=exclude_clock)


def ratio_pairs(points: Sequence[CharPoint], exclude_clock: int | None = None) -> list[tuple[int, int]]:
    """(i, ref): each point and the point of the same TP, type and load at the highest clock among the rest."""
    groups: dict[tuple[int, str, float], list[int]] = {}
    for i, p in enumerate(points):
        if p.clock_mhz != exclude_clock:
            groups.setdefault((p.tp, p.rtype.name, p.load_rps), []).append(i)
    pairs = []
    for idx in groups.values():
        ref = max(idx, key=lambda i: points[i].clock_mhz)
        pairs += [(i, ref) for i in idx if i != ref]
    return pairs


def best_ratio_offset(
    points: Sequence[CharPoint],
    engine_ttft: Sequence[float],
    measured: Sequence[float],
    exclude_clock: int | None = None,
) -> tuple[float, float]:
    """The per-request latency (added to every modelled TTFT) that best reproduces the clock ratios, and
    the mean squared log error of the ratios it leaves."""
    pairs = ratio_pairs(points, exclude_clock)
    e, m = np.array(engine_ttft), np.array(measured)
    i, ref = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    target = np.log(m[i] / m[ref])

    def err(c: float) -> float:
        return float(np.mean((np.log((e[i] + c) / (e[ref] + c)) - target) ** 2))

    return _golden(err, 0.0, float(max(m.max(), 1e-3)))


def ratio_error(
    points: Sequence[CharPoint],
    engine_ttft: Sequence[float],
    measured: Sequence[float],
    request_s: float,
    exclude_clock: int | None = None,
) -> float:
    """The mean squared log error of the clock ratios with ``request_s`` added to every modelled TTFT."""
    pairs = ratio_pairs(points, exclude_clock)
    e, m = np.array(engine_ttft), np.array(measured)
    i, ref = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return float(np.mean((np.log((e[i] + request_s) / (e[ref] + request_s)) - np.log(m[i] / m[ref])) ** 2))


def _best_offset(model: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """The constant added to every modelled value that minimises the mean squared log error."""
    m, y = np.array(model), np.array(measured)

    def err(c: float) -> float:
        return float(np.mean(np.log((m + c) / y) ** 2))

    return _golden(err, 0.0, float(max(y.max(), 1e-3)))


def _golden(err: Callable[[float], float], lo: float, hi: float, rounds: int = 60) -> tuple[float, float]:
    """Golden-section search of a unimodal ``err`` on [lo, hi]: the argument and its value."""
    for _ in range(rounds):
        a, b = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if err(a) < err(b):
            hi = b
        else:
            lo = a
    c = (lo + hi) / 2
    return c, err(c)


def below_knee_char(points: Sequence[CharPoint]) -> list[CharPoint]:
    """Characterization rows before their series' knee: every load of a (TP, clock, type) series up to
    (not including) the first whose P99 TTFT exceeds ``KNEE_FACTOR`` times the series' lowest load's."""
    series: dict[tuple[int, int, str], list[CharPoint]] = {}
    for p in points:
        series.setdefault((p.tp, p.clock_mhz, p.rtype.name), []).append(p)
    out = []
    for rows in series.values():
        rows.sort(key=lambda p: p.load_rps)
        base = rows[0].ttft_p99_s
        for p in rows:
            if p.ttft_p99_s > KNEE_FACTOR * base:
                break
            out.append(p)
    return out


def fit_kv_reserve(
    calibration: Calibration,
    points: Sequence[CharPoint],
    *,
    engine: str,
    arch: str = "llama-2-70b",
    candidates_gib: Sequence[float] = (1.0, 2.0, 3.0, 3.5, 4.0, 4.25, 4.5, 4.75, 5.0, 5.25, 5.5, 6.0),
    log: Callable[[str], None] = lambda _: None,
) -> FitResult:
    """The memory per GPU the engine keeps from its KV cache, from TP2 rows (70B on two GPUs leaves a
    few GiB of cache, and the characterization shows where it fills): the candidate whose modelled P99
    TTFT (request latency added as fitted for it) is closest to the measurements.

    vLLM 0.3.0 sizes its cache as ``total x gpu_memory_utilization`` less the memory in use after a
    profiling forward pass of ``max_num_batched_tokens`` tokens (weights, that pass's activations, the CUDA
    context, NCCL and cuBLAS buffers; CUDA graphs are captured afterwards, outside the budget): this
    reserve stands for all of that but the weights. Where the cache fills depends on how long each request
    holds its blocks, so the reserve also absorbs what the model gets wrong about the 2024 engine's speed."""
    rows = [p for p in points if p.tp == 2]
    best: tuple[float, float] | None = None
    for gib in candidates_gib:
        cfg = dataclasses.replace(calibration.engines[engine].config, reserved_bytes_per_gpu=gib * 2**30)
        e = dataclasses.replace(calibration.engines[engine], config=cfg)
        cal = dataclasses.replace(calibration, engines={**calibration.engines, engine: e})
        model = ServingModel(arch, engine, cal)
        ttft = [char_outcome(model, p).ttft_p99_s for p in rows]
        _, err = _best_offset(ttft, [p.ttft_p99_s for p in rows])
        log(f"KV reserve {gib} GiB: rms log error {math.sqrt(err):.4f} over {len(rows)} TP2 rows")
        if best is None or err < best[0]:
            best = (err, gib)
    assert best is not None
    return FitResult(best[1] * 2**30, math.sqrt(best[0]), len(candidates_gib), len(rows))


def fit_kernel_scale(
    calibration: Calibration,
    points: Sequence[CharPoint],
    *,
    engine: str,
    arch: str = "llama-2-70b",
    log: Callable[[str], None] = lambda _: None,
) -> FitResult:
    """How much slower than the measured kernels the engine ran (``EngineOverheads.kernel_scale``) and its
    per-request latency (``request_s``), from the absolute P99 TTFT of rows at one clock where little
    queues but a few prefills (the lowest load): golden-section on the scale, the latency that best fits
    each scale (``_best_offset``), squared log errors. The value is ``(kernel_scale, request_s)``."""
    base = calibration.engines[engine].overheads
    measured = [p.ttft_p99_s for p in points]
    evals = 0
    offsets: dict[float, float] = {}

    def err(scale: float) -> float:
        nonlocal evals
        evals += 1
        o = dataclasses.replace(base, kernel_scale=scale, request_s=0.0)
        model = ServingModel(arch, engine, _with_overheads(calibration, engine, o))
        ttft = [char_outcome(model, p).ttft_p99_s for p in points]
        offsets[scale], value = _best_offset(ttft, measured)
        log(
            f"kernel scale {scale:.3f}, request latency {offsets[scale] * 1e3:.1f} ms: "
            f"rms log error {math.sqrt(value):.4f}"
        )
        return value

    scale, value = _golden(err, 0.5, 3.0, rounds=20)
    return FitResult((round(scale, 3), offsets[scale]), math.sqrt(value), evals, len(points))
