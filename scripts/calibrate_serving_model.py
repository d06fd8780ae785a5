#!/usr/bin/env python3
"""Fit the serving model's free numbers to the public measurements and write its calibration (build time).

    .venv/bin/python scripts/calibrate_serving_model.py [PROFILES_DIR] [--out PATH] [--reuse-overheads | --power-only]

PROFILES_DIR defaults to ../shared/data/profiles beside the repository. The fits and the data each
uses are described in wattgate/servingmodel/fit.py; the result (with every fitted number, its error
and its source) goes to wattgate/servingmodel/data/calibration-h100.json. It takes tens of minutes
on this project's 2-core machines: it replays thousands of benchmark points on the engine model.
Nothing at run time needs it; tests check the shipped calibration against the data directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wattgate.servingmodel import fit  # noqa: E402
from wattgate.servingmodel.calibration import Calibration, EngineCalibration, ServingModel, read_calibration  # noqa: E402
from wattgate.servingmodel.engine import EngineConfig, Scheduler  # noqa: E402
from wattgate.servingmodel.kernels import DEFAULT_KERNELS, kernel_origin  # noqa: E402
from wattgate.servingmodel.measured import (  # noqa: E402
    CHARACTERIZATION_CONTEXT_TOKENS,
    CHARACTERIZATION_INPUT_TOKENS,
    CHARACTERIZATION_MAX_TOKENS,
    CHARACTERIZATION_SEED,
    CHARACTERIZATION_WINDOW_S,
    characterization_output_tokens,
    read_characterization,
)
from wattgate.servingmodel.power import PowerModel  # noqa: E402
from wattgate.servingmodel.steps import ClockLaw, EngineOverheads  # noqa: E402

DEFAULT_OUT = REPO / "wattgate" / "servingmodel" / "data" / "calibration-h100.json"
V1, V0 = "vllm-v1", "dynamollm-2024"
START = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:7.0f} s] {msg}", file=sys.stderr, flush=True)


def base_calibration() -> Calibration:
    v1 = EngineCalibration(
        "vllm-v1",
        EngineConfig(scheduler=Scheduler.V1, max_num_seqs=1024, max_num_batched_tokens=8192),
        EngineOverheads(),
        "vLLM V1 (`vllm serve` defaults on an 80 GB H100 since vLLM 0.8: chunked prefill, "
        "max_num_seqs 1024, max_num_batched_tokens 8192, gpu_memory_utilization 0.9)",
    )
    v0 = EngineCalibration(
        "dynamollm-2024",
        EngineConfig(scheduler=Scheduler.V0, max_num_seqs=256, max_num_batched_tokens=4096),
        EngineOverheads(),
        "the engine of the DynamoLLM characterization (vLLM V0 of May 2024 serving Llama-2-70B: "
        "prefill-first steps without chunking, max_num_seqs 256, max_num_batched_tokens 4096 = "
        "the model's context, gpu_memory_utilization 0.9)",
    )
    return Calibration(
        "H100-80GB-HBM3", DEFAULT_KERNELS, ClockLaw(), PowerModel(), {"vllm-v1": v1, "dynamollm-2024": v0}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles_dir", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "profiles")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--reuse-overheads",
        action="store_true",
        help="take vllm-v1's overheads and their fit record from --out instead of refitting them (step 1)",
    )
    parser.add_argument(
        "--power-only",
        action="store_true",
        help="take every timing fit (steps 1-4) from --out and refit only the power model (step 5): "
        "for a change to the power model that leaves step times alone",
    )
    args = parser.parse_args(argv)
    if args.power_only:
        old = read_calibration(args.out)
        prov = dict(old.provenance)
        prov["fits"] = dict(prov["fits"])
        log(f"1-4/5 overheads, clock law, kernel scale and KV reserve reused from {args.out}")
        cal = dataclasses.replace(old, power=power_model(old, args.profiles_dir, prov), provenance=prov)
        args.out.write_text(json.dumps(cal.to_document(), indent=1) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
        return 0
    prov: dict[str, Any] = {"kernels": kernel_origin(), "fits": {}}
    cal = vllm_overheads(base_calibration(), args, prov)
    cal = characterization_engine(cal, args.profiles_dir, prov)
    cal = dataclasses.replace(cal, provenance=prov)
    args.out.write_text(json.dumps(cal.to_document(), indent=1) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


def vllm_overheads(cal: Calibration, args: argparse.Namespace, prov: dict[str, Any]) -> Calibration:
    if args.reuse_overheads:
        old = read_calibration(args.out)
        overheads = old.engines[V1].overheads
        prov["fits"]["vllm-v1 overheads"] = old.provenance["fits"]["vllm-v1 overheads"]
        log(f"1/5 vLLM V1 overheads reused from {args.out}: {overheads}")
    else:
        log("1/5 vLLM V1 overheads on the 1B/3B/8B benchmark curves")
        res = fit.fit_vllm_overheads(cal, args.profiles_dir, log=log)
        assert isinstance(res.value, EngineOverheads)
        overheads = res.value
        prov["fits"]["vllm-v1 overheads"] = _about(
            res, "mean TTFT and mean TPOT of Llama-3.2-1B, 3.2-3B, 3.1-8B below the knee"
        )
    return _set(cal, V1, overheads=overheads)


def characterization_engine(cal: Calibration, profiles_dir: Path, prov: dict[str, Any]) -> Calibration:
    """The prototype's engine (V0 scheduling, the same kernels and step overheads as V1; its own kernel speed,
    KV reserve and request latency), then the GPU's clock law and power from its rows."""
    points = read_characterization(profiles_dir)
    cal = _set(cal, V0, overheads=dataclasses.replace(cal.engines[V1].overheads, request_s=0.0))

    log("2/5 kernel speed and request latency of the characterization's engine: absolute P99 TTFT, 0.5 req/s, 1980 MHz")
    low = [p for p in points if p.load_rps == 0.5 and p.ttft_p99_s < 3.0]
    top = [p for p in low if p.clock_mhz == cal.clock_law.max_clock_mhz]
    res = fit.fit_kernel_scale(cal, top, engine=V0, log=log)
    scale, request_s = res.value  # type: ignore[misc]
    o = cal.engines[V0].overheads
    cal = _set(cal, V0, overheads=dataclasses.replace(o, kernel_scale=scale, request_s=request_s))
    prov["fits"]["kernel scale"] = _about(res, "P99 TTFT at 0.5 req/s and 1980 MHz, 3 TPs x 9 types (below 3 s)")

    log("3/5 clock law on the characterization's P99 TTFT and TBT ratios across clocks at 0.5 req/s")
    res, _ = fit.fit_clock_law(
        _set(cal, V0, overheads=dataclasses.replace(cal.engines[V0].overheads, request_s=0.0)),
        low,
        engine=V0,
        request_s=request_s,
        log=log,
    )
    law, _ = res.value  # type: ignore[misc]
    cal = dataclasses.replace(cal, clock_law=law)
    prov["fits"]["clock law"] = _about(
        res,
        "P99 TTFT (below 3 s) and median time between tokens at 0.5 req/s over those at the top clock, "
        "6 clocks x 3 TPs x 9 types (TBT: the benchmark's logs, data/characterization-tbt.csv); memory-bound "
        "time grows as knee/f below the knee, latency-bound and all-reduce time as f_max/f",
    )

    log("4/5 KV reserve of the characterization's engine on its TP2 rows at 1980 MHz")
    tp2 = [p for p in points if p.tp == 2 and p.clock_mhz == 1980 and p.load_rps <= 3.0]
    res = fit.fit_kv_reserve(cal, tp2, engine=V0, log=log)
    assert isinstance(res.value, float)
    for name in (V0, V1):
        cal = _set(cal, name, config_changes={"reserved_bytes_per_gpu": res.value})
    prov["fits"]["KV reserve"] = _about(res, "P99 TTFT of the TP2 rows at 1980 MHz up to 3 req/s, every type")

    return dataclasses.replace(cal, power=power_model(cal, profiles_dir, prov))


def power_model(cal: Calibration, profiles_dir: Path, prov: dict[str, Any]) -> PowerModel:
    log("5/5 power on every characterization row")
    model = ServingModel("llama-2-70b", V0, cal)
    rows = [(p, fit.char_outcome(model, p)) for p in read_characterization(profiles_dir)]
    res = fit.fit_power(rows, cal.clock_law.max_clock_mhz)
    assert isinstance(res.value, PowerModel)
    prov["fits"]["power"] = _about(
        res,
        "instance power of all 1,351 characterization rows, each busy state capped at the board's 700 W "
        "(relative errors)",
    )
    prov["characterization requests"] = {
        "source": "jovans2/jovan-vllm jovan_vllm/vllm/benchmarks/benchmark_power.py and prompts (May 2024), "
        "against its vLLM 0.3.0 fork",
        "input_tokens": CHARACTERIZATION_INPUT_TOKENS,
        "max_tokens": CHARACTERIZATION_MAX_TOKENS,
        "output_tokens": {
            i: {o: characterization_output_tokens(n, m) for o, m in CHARACTERIZATION_MAX_TOKENS.items()}
            for i, n in CHARACTERIZATION_INPUT_TOKENS.items()
        },
        "context_tokens": CHARACTERIZATION_CONTEXT_TOKENS,
        "arrivals": f"Poisson, numpy seed {CHARACTERIZATION_SEED} per point, {CHARACTERIZATION_WINDOW_S:.0f} s window",
    }
    return res.value


def _set(
    cal: Calibration,
    engine: str,
    *,
    overheads: EngineOverheads | None = None,
    config_changes: dict[str, Any] | None = None,
) -> Calibration:
    e = cal.engines[engine]
    if overheads is not None:
        e = dataclasses.replace(e, overheads=overheads)
    if config_changes:
        e = dataclasses.replace(e, config=dataclasses.replace(e.config, **config_changes))
    return dataclasses.replace(cal, engines={**cal.engines, engine: e})


def _about(res: fit.FitResult, data: str) -> dict[str, Any]:
    return {
        "data": data,
        "points": res.points,
        "rms_log_error": round(res.rms_log_error, 4),
        "evaluations": res.evaluations,
    }


if __name__ == "__main__":
    sys.exit(main())
