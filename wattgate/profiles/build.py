"""Build the shipped Llama-2-70B-on-H100 profile document from the source measurements (deterministic)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattgate.profiles.derive import (
    FIT_LOAD_RPS,
    MAX_CLOCK_MHZ,
    SAMPLES_PER_S,
    TbtModel,
    fit_clock_alpha,
    read_characterization,
    read_token_times,
    read_type_lengths,
    unloaded_tbt_s,
)
from wattgate.profiles.table import COLUMNS, FORMAT, FORMAT_VERSION, load_profile

MODEL = "llama-2-70b"
GPU = "H100-80GB-HBM3"
TBT_DECIMALS = 6  # microseconds: far below the model's own uncertainty

CHARACTERIZATION_ORIGIN = {
    "repository": "https://github.com/jovans2/jovan-vllm",
    "path": "cluster_experiments/characterization_energy.csv, cluster_experiments/characterization_performance.csv",
    "commit": "0e1b0fefd05f618183baaff57a7f016ada745a9b",
    "licence": "none stated; used as published measurements (figures) with attribution, no code copied",
    "attribution": "Stojkovic et al., DynamoLLM (HPCA 2025), public prototype repository",
}
PERF_MODEL_ORIGIN = {
    "repository": "https://github.com/Mutinifni/splitwise-sim",
    "path": "data/perf_model.csv",
    "licence": "MIT",
    "attribution": "Patel et al., Splitwise (ISCA 2024); splitwise-sim",
}
TRACE_ORIGIN = {
    "repository": "https://github.com/Azure/AzurePublicDataset",
    "path": "data/AzureLLMInferenceTrace_conv.csv",
    "commit": "790921015d50dd6aae7f7e47f39ba0e235ad6b08",
    "licence": "CC-BY 4.0",
    "attribution": "Azure Public Dataset; Patel et al., Splitwise, ISCA 2024",
}


@dataclass(frozen=True)
class Sources:
    """Where the source files lie: the profiles directory and the Azure conversation trace."""

    profiles_dir: Path
    trace_csv: Path

    @classmethod
    def under(cls, profiles_dir: Path, trace_csv: Path | None = None) -> Sources:
        default_trace = profiles_dir.parent / "traces" / "AzureLLMInferenceTrace_conv.csv"
        return cls(profiles_dir, trace_csv or default_trace)


def build_tbt_model(sources: Sources) -> TbtModel:
    points = read_characterization(sources.profiles_dir)
    return TbtModel(
        curves=read_token_times(sources.profiles_dir / "perf_model.csv"),
        lengths=read_type_lengths(sources.trace_csv),
        alpha=fit_clock_alpha(points),
    )


def build_llama2_70b_h100(sources: Sources) -> dict[str, Any]:
    """The profile document: measured TTFT and power per characterization row, modelled TBT."""
    points = read_characterization(sources.profiles_dir)
    model = build_tbt_model(sources)
    rows = []
    for p in points:
        tbt = round(model.tbt_s(p.tp, p.rtype, p.clock_mhz, p.load_rps), TBT_DECIMALS)
        rows.append([p.tp, p.clock_mhz, p.rtype.name, p.load_rps, p.performance, tbt, p.power_w])
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": MODEL,
        "gpu": GPU,
        "provenance": _provenance(model),
        "columns": list(COLUMNS),
        "rows": rows,
    }
    load_profile(doc)  # validate before anyone writes it
    return doc


def _provenance(model: TbtModel) -> dict[str, Any]:
    lengths = {t.name: [round(v.input_tokens, 1), round(v.output_tokens, 1)] for t, v in sorted(model.lengths.items())}
    return {
        "summary": (
            "Llama-2-70B (most likely under vLLM on an 8xH100 DGX). ttft_p99_s and power_w are measured "
            "(DynamoLLM characterization); tbt_p99_s is modelled. See wattgate/profiles/data/README.md."
        ),
        "sources": {
            "characterization": CHARACTERIZATION_ORIGIN,
            "perf_model": PERF_MODEL_ORIGIN,
            "trace": TRACE_ORIGIN,
        },
        "ttft_p99_s": "characterization_performance.csv 'performance' unchanged (P99 TTFT, s); not smoothed",
        "power_w": f"characterization_energy.csv 'energy' (J per 100 ms sample) x {SAMPLES_PER_S}",
        "tbt_p99_s": {
            "model": "step_s(TP, batch, input) at max clock x (f_max / f) ** alpha, batch from Little's law",
            "alpha": round(model.alpha, 4),
            "alpha_fit": f"median over (TP, type) of log(TTFT800/TTFT1980)/log(1980/800) at {FIT_LOAD_RPS} req/s",
            "max_clock_mhz": MAX_CLOCK_MHZ,
            "batch_caps": {str(tp): c.batches[-1] for tp, c in sorted(model.curves.items())},
            "unloaded_tbt_s": {str(tp): round(unloaded_tbt_s(model.curves, tp), 5) for tp in sorted(model.curves)},
            "type_mean_tokens_input_output": lengths,
        },
    }
