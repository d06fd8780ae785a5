"""Readers for the public measurements the serving model is calibrated and validated on (``../shared/data/profiles``).

- ``characterization_{energy,performance}.csv``: the DynamoLLM prototype's characterization of
  Llama-2-70B on an 8xH100 server (jovans2/jovan-vllm, no licence stated: used as published figures
  with attribution). Per (TP, SM clock, request type, load): P99 TTFT (s) and energy per 100 ms
  sample (J), i.e. instance power / 10.
- ``jovan_vllm_benchs/llama*_h100.csv``: vLLM's ``benchmark_serving.py`` against ``vllm serve`` (TP8,
  1024 input / 350 output tokens, ``--ignore-eos``, Poisson arrivals, 20 s of requests per rate,
  ``--gpu-memory-utilization 0.95``; read from the repository's ``new_benchs/bench_goodput_power.py``):
  mean and P99 TTFT and TPOT (ms) per request rate, and DCGM power samples (W per GPU, every 100 ms).
  The columns named ``P50_TTFT`` and ``P50_TPOT`` hold the benchmark's *mean* (the script parses the
  "Mean TTFT" line into them).
- ``data/characterization-tbt.csv`` (in this package): the characterization's time between tokens per
  point, which its CSVs leave out, from the benchmark's console logs (``read_characterization_tbt``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wattgate.profiles.classes import RequestType
from wattgate.servingmodel.errors import ServingModelError

SAMPLES_PER_S = 10  # one characterization energy sample covers 100 ms: W = J per sample x 10

# How the characterization was run, read from the prototype's own benchmark (jovans2/jovan-vllm,
# ``jovan_vllm/vllm/benchmarks/benchmark_power.py``, May 2024; its clocks, loads and per-type maximum
# loads are the CSVs' grid) against its fork of vLLM 0.3.0 (``vllm/``, V0: prefill-first, 256 sequences,
# ``max_num_batched_tokens`` = ``max_model_len`` = 4,096 for Llama-2, gpu_memory_utilization 0.9):
# - prompts: the three ShareGPT prompts that script picked by their Llama-2 token count (400-500,
#   1,000-1,100 and 4,000-4,100 tokens) and saved in ``benchmarks/prompts``: 467, 1,010 and 4,085 tokens
#   with the Llama-2 tokenizer (BOS included, as ``tokenizer(prompts).input_ids`` counts them);
# - outputs: ``max_tokens`` 96, 256 and 600 with ``ignore_eos``, but vLLM 0.3.0 ends a sequence once it is
#   longer than ``max_model_len`` (``LLMEngine._check_stop``): the 4,085-token prompt leaves room for
#   12 tokens whatever ``max_tokens`` says, which is why the LS, LM and LL rows read the same TTFT and
#   power at every TP, clock and load. The model runs the 11 of them whose KV the cache holds
#   (``characterization_output_tokens``: a request must fit the context; the 12th is one decode step);
# - arrivals: Poisson with numpy's seed 100 re-seeded for every point, over a 20 s window
#   (``characterization_arrivals``): 12 requests at 0.5 req/s, 41 at 2, 175 at 9;
# - TTFT: first token out of the engine less the request's arrival at the engine (``seq_group.arrival_time``),
#   P99 by ``np.percentile`` over that point's requests.
CHARACTERIZATION_INPUT_TOKENS = {"S": 467, "M": 1010, "L": 4085}
CHARACTERIZATION_MAX_TOKENS = {"S": 96, "M": 256, "L": 600}
CHARACTERIZATION_CONTEXT_TOKENS = 4096  # Llama-2's max_model_len
CHARACTERIZATION_WINDOW_S = 20.0
CHARACTERIZATION_SEED = 100
_OVERSAMPLING = 2  # the benchmark draws 2 x rate x window gaps and keeps the arrivals inside the window


def characterization_output_tokens(input_tokens: int, max_tokens: int) -> int:
    """Output tokens a characterization request produced (and the model runs): ``max_tokens``, or as many as
    the context leaves once the prompt is in it."""
    return min(max_tokens, CHARACTERIZATION_CONTEXT_TOKENS - input_tokens)


def characterization_arrivals(rate_rps: float) -> list[float]:
    """The characterization's arrival times (s from the client's start) at one load, as its benchmark drew
    them: exponential gaps from numpy's legacy generator seeded with 100, kept inside (0, 20 s)."""
    if rate_rps <= 0:
        raise ServingModelError(f"a load must be positive, got {rate_rps}")
    rng = np.random.RandomState(CHARACTERIZATION_SEED)
    gaps = rng.exponential(scale=1.0 / rate_rps, size=int(_OVERSAMPLING * CHARACTERIZATION_WINDOW_S * rate_rps))
    times = np.cumsum(gaps)
    return [float(t) for t in times[(times > 0) & (times < CHARACTERIZATION_WINDOW_S)]]


JOVAN_MODELS = {
    "llama-3.2-1b": "llama1b_h100.csv",
    "llama-3.2-3b": "llama3b_h100.csv",
    "llama-3.1-8b": "llama8b_h100.csv",
    "llama-3.1-70b": "llama70b_h100.csv",
}


@dataclass(frozen=True)
class CharPoint:
    """One characterization row: both CSVs joined on (load, TP, clock, type)."""

    tp: int
    clock_mhz: int
    rtype: RequestType
    load_rps: float
    ttft_p99_s: float
    power_w: float  # the instance (all TP GPUs)

    @property
    def input_tokens(self) -> int:
        return CHARACTERIZATION_INPUT_TOKENS[self.rtype.input.value]

    @property
    def output_tokens(self) -> int:
        return characterization_output_tokens(self.input_tokens, CHARACTERIZATION_MAX_TOKENS[self.rtype.output.value])

    def arrivals(self) -> list[float]:
        return characterization_arrivals(self.load_rps)


@dataclass(frozen=True)
class BenchPoint:
    """One request rate of a vLLM serving benchmark (latencies in seconds, power in W per GPU)."""

    model: str
    tp: int
    input_tokens: int
    output_tokens: int
    rate_rps: float
    ttft_mean_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p99_s: float
    power_p50_w: float
    power_p99_w: float


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise ServingModelError(f"cannot read {path}: {exc}") from exc


def read_characterization(profiles_dir: Path) -> list[CharPoint]:
    """Join characterization_energy.csv and characterization_performance.csv row by row, checking keys."""
    energy = _rows(profiles_dir / "characterization_energy.csv")
    perf = _rows(profiles_dir / "characterization_performance.csv")
    if len(energy) != len(perf) or not energy:
        raise ServingModelError(f"characterization CSVs differ in length ({len(energy)} vs {len(perf)}) or are empty")
    keys = ("load", "parallelization_strategy", "frequency", "request_type")
    out = []
    for n, (e, p) in enumerate(zip(energy, perf, strict=True)):
        try:
            if tuple(e[k] for k in keys) != tuple(p[k] for k in keys):
                raise ServingModelError(f"characterization row {n}: keys differ between energy and performance")
            tp_text = e["parallelization_strategy"]
            if not tp_text.startswith("TP"):
                raise ServingModelError(f"characterization row {n}: unknown strategy {tp_text!r}")
            out.append(
                CharPoint(
                    tp=int(tp_text[2:]),
                    clock_mhz=int(e["frequency"]),
                    rtype=RequestType.parse(e["request_type"]),
                    load_rps=float(e["load"]),
                    ttft_p99_s=float(p["performance"]),
                    power_w=float(e["energy"]) * SAMPLES_PER_S,
                )
            )
        except (KeyError, ValueError) as exc:
            raise ServingModelError(f"characterization row {n}: {exc}") from exc
    return out


CHARACTERIZATION_TBT = Path(__file__).resolve().parent / "data" / "characterization-tbt.csv"


def read_characterization_tbt(path: Path = CHARACTERIZATION_TBT) -> dict[tuple[int, int, str, float], float]:
    """Measured time between tokens (s) of the characterization's points, keyed by (TP, clock, type, load): the
    median over a point's requests of each request's 90th-percentile gap between tokens (its mean where the
    log lost the median). Extracted from the benchmark's own logs by ``scripts/extract_characterization_tbt.py``
    (TP8: the run the CSVs come from; TP4, TP2: a repeat of the same grid; TP2 stops within the LM type)."""
    out = {}
    for n, r in enumerate(_rows(path)):
        try:
            key = (int(r["tp"]), int(r["clock_mhz"]), RequestType.parse(r["request_type"]).name, float(r["load_rps"]))
            out[key] = float(r["tbt_p50_s"] or r["tbt_mean_s"])
        except (KeyError, ValueError) as exc:
            raise ServingModelError(f"{path.name} row {n}: {exc}") from exc
    return out


def read_benchmark(profiles_dir: Path, model: str) -> list[BenchPoint]:
    """One model's vLLM benchmark rows (jovan_vllm_benchs), in file order (repeated rates kept)."""
    try:
        name = JOVAN_MODELS[model]
    except KeyError:
        raise ServingModelError(f"no vLLM benchmark for {model}; have {', '.join(JOVAN_MODELS)}") from None
    out = []
    for n, r in enumerate(_rows(profiles_dir / "jovan_vllm_benchs" / name)):
        try:
            out.append(
                BenchPoint(
                    model,
                    int(r["TensorParallelism"]),
                    int(r["InputLen"]),
                    int(r["OutputLen"]),
                    float(r["RequestRate"]),
                    float(r["P50_TTFT"]) / 1e3,
                    float(r["P99_TTFT"]) / 1e3,
                    float(r["P50_TPOT"]) / 1e3,
                    float(r["P99_TPOT"]) / 1e3,
                    float(r["P50_POWINST"]),
                    float(r["P99_POWINST"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise ServingModelError(f"{name} row {n}: {exc}") from exc
    return out
