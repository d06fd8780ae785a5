"""Derive profile rows from published measurements: the DynamoLLM characterization CSVs plus a TBT model.

Readings (each checked in tests/profiles/test_derive.py against the data):
- ``energy`` in characterization_energy.csv is joules per 100 ms sample: instance power W = energy x 10.
- ``performance`` in characterization_performance.csv is P99 time to first token in seconds, copied as is.
- P99 TBT is modelled: the decode step time of Llama-2-70B on H100 at the batch size that Little's law
  gives for the request type's mean output length and the load (splitwise-sim perf_model.csv, max
  clock), scaled to lower SM clocks by ``(f_max / f) ** alpha`` with alpha fitted from the
  characterization's own TTFT-vs-clock ratios at the lowest load.
"""

from __future__ import annotations

import bisect
import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wattgate.profiles.classes import LENGTH_CLASSES, REQUEST_TYPES, ClassEdges, LengthClass, ProfilesError, RequestType

SAMPLES_PER_S = 10  # one characterization energy sample covers 100 ms: W = J per sample x 10
MAX_CLOCK_MHZ = 1980  # H100 SXM max SM clock; perf_model.csv's H100 rows run at default (max) clocks
FIT_LOAD_RPS = 0.5  # the lowest characterization load: TTFT there is closest to pure prefill


class DeriveError(ProfilesError):
    """Source measurements missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class CharPoint:
    """One row of the characterization: both CSVs joined on (load, TP, clock, type)."""

    tp: int
    clock_mhz: int
    rtype: RequestType
    load_rps: float
    energy: float
    performance: float

    @property
    def power_w(self) -> float:
        return self.energy * SAMPLES_PER_S


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise DeriveError(f"cannot read {path}: {exc}") from exc


def read_characterization(profiles_dir: Path) -> list[CharPoint]:
    """Join characterization_energy.csv and characterization_performance.csv row by row, checking keys."""
    energy = _read_csv(profiles_dir / "characterization_energy.csv")
    perf = _read_csv(profiles_dir / "characterization_performance.csv")
    if len(energy) != len(perf) or not energy:
        raise DeriveError(f"characterization CSVs differ in length ({len(energy)} vs {len(perf)}) or are empty")
    keys = ("load", "parallelization_strategy", "frequency", "request_type")
    points = []
    for n, (e, p) in enumerate(zip(energy, perf, strict=True)):
        try:
            if tuple(e[k] for k in keys) != tuple(p[k] for k in keys):
                raise DeriveError(f"characterization row {n}: keys differ between energy and performance")
            tp_text = e["parallelization_strategy"]
            if not tp_text.startswith("TP"):
                raise DeriveError(f"characterization row {n}: unknown strategy {tp_text!r}")
            points.append(
                CharPoint(
                    tp=int(tp_text[2:]),
                    clock_mhz=int(e["frequency"]),
                    rtype=RequestType.parse(e["request_type"]),
                    load_rps=float(e["load"]),
                    energy=float(e["energy"]),
                    performance=float(p["performance"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise DeriveError(f"characterization row {n}: {exc}") from exc
    return points


@dataclass(frozen=True)
class TokenTimeCurve:
    """Decode step time (s) of one TP at max clock: by batch size (prompt 512) and by prompt size (batch 1)."""

    batches: tuple[int, ...]
    batch_step_s: tuple[float, ...]
    prompts: tuple[int, ...]
    prompt_step_s: tuple[float, ...]

    def step_s(self, batch: float, prompt_tokens: float) -> float:
        """Step time at ``batch`` (linear between measured batches, last segment extended beyond them),
        times the batch-1 context factor of ``prompt_tokens`` relative to the 512-token sweep."""
        base = _piecewise(self.batches, self.batch_step_s, max(batch, 1.0))
        ctx = _piecewise(self.prompts, self.prompt_step_s, prompt_tokens) / _piecewise(
            self.prompts, self.prompt_step_s, 512
        )
        return base * ctx


def _piecewise(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Linear interpolation; clamps below the first x, extends the last segment above the last x."""
    if x <= xs[0]:
        return ys[0]
    j = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    i = j - 1
    return ys[i] + (ys[j] - ys[i]) * (x - xs[i]) / (xs[j] - xs[i])


def read_token_times(path: Path, model: str = "llama2-70b", hardware: str = "h100-80gb") -> dict[int, TokenTimeCurve]:
    """Median token_time over repeats from splitwise-sim's perf_model.csv, per TP.

    Step times are made non-decreasing in batch (running max). A batch size whose median prompt_time
    is lower than the previous batch size's is dropped with all larger ones: prefilling more prompts
    cannot be faster, so such rows did not run what they claim (TP2 at batch 64: prompt_time falls
    6.6x from batch 32).
    """
    rows = [r for r in _read_csv(path) if r.get("model") == model and r.get("hardware") == hardware]
    if not rows:
        raise DeriveError(f"no {model} on {hardware} rows in {path}")
    by_batch: dict[int, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    by_prompt: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        tp, prompt, batch = int(r["tensor_parallel"]), int(r["prompt_size"]), int(r["batch_size"])
        tok_s, prompt_s = float(r["token_time"]) / 1000, float(r["prompt_time"]) / 1000
        if int(r["token_size"]) != 128:
            continue  # the output-length sweep: token_time there moves by <8% and only at batch 1
        if prompt == 512:
            by_batch[tp][batch].append((tok_s, prompt_s))
        if batch == 1:
            by_prompt[tp][prompt].append(tok_s)
    curves = {}
    for tp, table in by_batch.items():
        batches: list[int] = []
        steps: list[float] = []
        last_prompt_s = 0.0
        for b in sorted(table):
            prompt_s = statistics.median(x[1] for x in table[b])
            if prompt_s < last_prompt_s:
                break
            last_prompt_s = prompt_s
            batches.append(b)
            # Running max: a bigger batch never steps faster; the medians cross once, by 0.06 ms (TP4, batch 4).
            steps.append(max([statistics.median(x[0] for x in table[b]), *steps[-1:]]))
        prompts = sorted(by_prompt[tp])
        curves[tp] = TokenTimeCurve(
            tuple(batches),
            tuple(steps),
            tuple(prompts),
            tuple(statistics.median(by_prompt[tp][p]) for p in prompts),
        )
    return curves


@dataclass(frozen=True)
class TypeLengths:
    """Mean input tokens of the type's input class and mean output tokens of its output class in a trace."""

    input_tokens: float
    output_tokens: float


def read_type_lengths(trace_csv: Path, edges: ClassEdges | None = None) -> dict[RequestType, TypeLengths]:
    """Per request type: mean input tokens over its input class, mean output tokens over its output class.

    Marginal means, not the means of the (input, output) cell: the characterization's TTFT for LS, LM
    and LL is the same within 1%, so the prototype drew prompts by input class alone; and the SL cell of
    the conv trace holds only 9 requests.
    """
    edges = edges or ClassEdges()
    ins: dict[LengthClass, list[int]] = defaultdict(list)
    outs: dict[LengthClass, list[int]] = defaultdict(list)
    for n, r in enumerate(_read_csv(trace_csv)):
        try:
            i, o = int(r["ContextTokens"]), int(r["GeneratedTokens"])
        except (KeyError, ValueError) as exc:
            raise DeriveError(f"{trace_csv} row {n}: {exc}") from exc
        ins[edges.input_class(i)].append(i)
        outs[edges.output_class(o)].append(o)
    if any(not ins[c] or not outs[c] for c in LENGTH_CLASSES):
        raise DeriveError(f"{trace_csv}: every input and output class needs at least one request")
    return {t: TypeLengths(statistics.fmean(ins[t.input]), statistics.fmean(outs[t.output])) for t in REQUEST_TYPES}


def decode_batch(load_rps: float, output_tokens: float, step: Callable[[float], float], cap: float) -> float:
    """Little's law fixed point: batch = min(cap, load x output_tokens x step_s(batch)).

    Iterated from batch 1: the map rises with the batch and is bounded by ``cap``, so the sequence
    rises to its least fixed point. Beyond ``cap`` (the largest batch measured) requests queue: the
    extra delay is in the measured TTFT, and TBT stays at the step time of the cap.
    """
    batch = 1.0
    for _ in range(100_000):
        nxt = min(cap, max(1.0, load_rps * output_tokens * step(batch)))
        if abs(nxt - batch) < 1e-9:
            return nxt
        batch = nxt
    return batch


def fit_clock_alpha(points: Iterable[CharPoint], low_mhz: int = 800, high_mhz: int = MAX_CLOCK_MHZ) -> float:
    """Median over (TP, type) of log(TTFT(low) / TTFT(high)) / log(high / low) at the lowest load."""
    ttft = {(p.tp, p.clock_mhz, p.rtype): p.performance for p in points if p.load_rps == FIT_LOAD_RPS}
    ratios = [
        math.log(ttft[(tp, low_mhz, t)] / ttft[(tp, high_mhz, t)]) / math.log(high_mhz / low_mhz)
        for (tp, clock, t) in ttft
        if clock == high_mhz and (tp, low_mhz, t) in ttft
    ]
    if not ratios:
        raise DeriveError(f"no TTFT pairs at {low_mhz} and {high_mhz} MHz to fit the clock exponent")
    return statistics.median(ratios)


@dataclass(frozen=True)
class TbtModel:
    """P99 TBT (s) at (TP, clock, type, load): decode step at the Little's-law batch, scaled by clock."""

    curves: dict[int, TokenTimeCurve]
    lengths: dict[RequestType, TypeLengths]
    alpha: float
    max_clock_mhz: int = MAX_CLOCK_MHZ

    def batch(self, tp: int, rtype: RequestType, clock_mhz: float, load_rps: float) -> float:
        cap = float(self._curve(tp).batches[-1])
        out = self.lengths[rtype].output_tokens
        return decode_batch(load_rps, out, lambda b: self.step_s(tp, rtype, clock_mhz, b), cap)

    def step_s(self, tp: int, rtype: RequestType, clock_mhz: float, batch: float) -> float:
        at_max = self._curve(tp).step_s(batch, self.lengths[rtype].input_tokens)
        scale: float = (self.max_clock_mhz / clock_mhz) ** self.alpha
        return at_max * scale

    def _curve(self, tp: int) -> TokenTimeCurve:
        curve = self.curves.get(tp)
        if curve is None:
            raise DeriveError(f"no decode token times for TP{tp}")
        return curve

    def tbt_s(self, tp: int, rtype: RequestType, clock_mhz: float, load_rps: float) -> float:
        return self.step_s(tp, rtype, clock_mhz, self.batch(tp, rtype, clock_mhz, load_rps))


def unloaded_tbt_s(curves: dict[int, TokenTimeCurve], tp: int) -> float:
    """Batch-1 decode step time at max clock (512-token prompt): the paper's 'unloaded latency'."""
    return curves[tp].batch_step_s[curves[tp].batches.index(1)]
