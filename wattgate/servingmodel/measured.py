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
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from wattgate.profiles.classes import RequestType
from wattgate.servingmodel.errors import ServingModelError

SAMPLES_PER_S = 10  # one characterization energy sample covers 100 ms: W = J per sample x 10

# The characterization's request lengths, read from the prototype (cluster_experiments/): inputs are
# its three prompts (334 / 580 / 2,215 words of English; about 1.33 Llama-2 tokens per word), outputs
# the 33rd / 67th / 99th percentiles of the conversation trace's output tokens (94 / 371 / 601). (At
# 4 characters per token the long prompt would not leave room for 601 tokens in Llama-2's 4,096.)
CHARACTERIZATION_INPUT_TOKENS = {"S": 444, "M": 771, "L": 2946}
CHARACTERIZATION_OUTPUT_TOKENS = {"S": 94, "M": 371, "L": 601}

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
        return CHARACTERIZATION_OUTPUT_TOKENS[self.rtype.output.value]


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
