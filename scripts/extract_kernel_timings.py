#!/usr/bin/env python3
"""Extract the H100 SXM kernel timings the serving model needs from NVIDIA's aiconfigurator-core (Apache-2.0).

aiconfigurator-core ships kernel latencies measured under vLLM 0.24.0 on an H100 80GB HBM3 (parquet
files: bf16 GEMMs by (m, n, k), FlashAttention-3 prefill and decode attention by batch, sequence
length and heads, vLLM's custom all-reduce and NCCL all-reduce by message size). This script reads
them once, at build time, and writes for every known architecture and TP the per-layer pieces one
engine step is made of (``wattgate/servingmodel/data/kernels-h100-sxm.json``). The serving model
reads only that JSON: neither aiconfigurator nor pandas is a runtime dependency.

    pip install -e '.[calibrate]'   # aiconfigurator-core, pandas, pyarrow (build time only)
    .venv/bin/python scripts/extract_kernel_timings.py [--out PATH] [--check]

GEMM latencies between the measured n and k are interpolated bilinearly (a GEMM's time is close to
linear in n and k at a fixed m); each m keeps its measured value. ``--check`` exits 1 when the
shipped file differs from a fresh extraction.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattgate.servingmodel.arch import ARCHITECTURES, Architecture

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "wattgate" / "servingmodel" / "data" / "kernels-h100-sxm.json"
SYSTEM = "h100_sxm"
VLLM = "0.24.0"
NCCL = "2.27.3"
TPS = (1, 2, 4, 8)
ELEMENT_BYTES = 2  # bf16 (custom all-reduce) and half (NCCL): the all-reduce tables count elements
ORIGIN = {
    "package": "aiconfigurator-core==0.12.0 (PyPI)",
    "licence": "Apache-2.0",
    "copyright": "Copyright (c) 2025-2026 NVIDIA CORPORATION & AFFILIATES",
    "system": f"{SYSTEM}: NVIDIA H100 80GB HBM3",
    "tables": {
        "gemm": f"systems/data/{SYSTEM}/gemm/vllm/{VLLM}/gemm_perf.parquet (bfloat16, torch.nn.functional.linear)",
        "prefill_attention": f"systems/data/{SYSTEM}/attention/vllm/{VLLM}/context_attention_perf.parquet "
        "(vllm_flash_attn_fa3, bf16 KV cache, batch 1, no sliding window)",
        "decode_attention": f"systems/data/{SYSTEM}/attention/vllm/{VLLM}/generation_attention_perf.parquet "
        "(vllm_flash_attn_fa3, bf16 KV cache, no sliding window)",
        "allreduce": f"systems/data/{SYSTEM}/comm/vllm/{VLLM}/custom_allreduce_perf.parquet (vllm_graph) and "
        f"systems/data/{SYSTEM}/comm/nccl/{NCCL}/nccl_perf.parquet (all_reduce, half): the faster of the two; "
        "their message_size is in 2-byte elements, converted to bytes",
    },
    "units": "latency in seconds per call on one GPU; sizes in tokens or bytes",
}


def _data_dir() -> Path:
    return Path(str(resources.files("aiconfigurator_core") / "systems" / "data" / SYSTEM))


def _bracket(grid: list[int], x: int) -> tuple[int, int, float]:
    """The grid points around ``x`` and its weight between them; above the grid, the last two (linear
    extrapolation: at a fixed m and k a GEMM's time grows in proportion to n once n is large)."""
    if x in grid:
        return x, x, 0.0
    if x > grid[-1]:
        lo, hi = grid[-2], grid[-1]
    else:
        lo = max(v for v in grid if v < x)
        hi = min(v for v in grid if v > x)
    return lo, hi, (x - lo) / (hi - lo)


def _gemm_curve(g: pd.DataFrame, ms: list[int], n: int, k: int) -> np.ndarray:
    ns, ks = sorted(g.n.unique()), sorted(g.k.unique())
    n0, n1, wn = _bracket(ns, n)
    k0, k1, wk = _bracket(ks, k)
    table = g.groupby(["n", "k", "m"]).latency.median()

    def at(nn: int, kk: int) -> np.ndarray:
        return np.array([table[(nn, kk, m)] for m in ms])

    lo = at(n0, k0) * (1 - wk) + at(n0, k1) * wk
    hi = at(n1, k0) * (1 - wk) + at(n1, k1) * wk
    return (lo * (1 - wn) + hi * wn) / 1e3


def _attention(df: pd.DataFrame, heads: int, kv: int, head_dim: int, col: str) -> pd.DataFrame | None:
    sub = df[
        (df.kv_cache_dtype == "bfloat16")
        & (df.head_dim == head_dim)
        & (df.window_size == 0)
        & (df.kernel_source == "vllm_flash_attn_fa3")
        & (df.num_heads == heads)
        & (df.num_key_value_heads == kv)
    ]
    if sub.empty:
        return None
    return sub.groupby(["batch_size", col]).latency.median().unstack()


def _allreduce(custom: pd.DataFrame, nccl: pd.DataFrame, tp: int) -> dict[str, list[float]]:
    """All-reduce latency by message size in bytes, the faster of the two backends at each size.

    Both tables count ``message_size`` in elements, not bytes: aiconfigurator's NCCL collector stores
    ``nccl-tests`` bytes // bytes per element, its vLLM collector the element count of the bf16 tensor
    it all-reduces (``collector/collect_nccl.py``, ``collect_all_reduce.py``). Both are 2-byte types.
    """
    a = custom[(custom.backend == "vllm_graph") & (custom.num_gpus == tp)].groupby("message_size").latency.median()
    b = nccl[(nccl.op_name == "all_reduce") & (nccl.nccl_dtype == "half") & (nccl.num_gpus == tp)]
    b = b.groupby("message_size").latency.median()
    sizes = sorted(set(a.index) & set(b.index))
    return {"bytes": [int(s) * ELEMENT_BYTES for s in sizes], "s": [min(a[s], b[s]) / 1e3 for s in sizes]}


def extract() -> dict[str, Any]:
    d = _data_dir()
    gemm = pd.read_parquet(d / "gemm" / "vllm" / VLLM / "gemm_perf.parquet")
    gemm = gemm[(gemm.gemm_dtype == "bfloat16") & (gemm.kernel_source == "torch.nn.functional.linear")]
    ctx = pd.read_parquet(d / "attention" / "vllm" / VLLM / "context_attention_perf.parquet")
    gen = pd.read_parquet(d / "attention" / "vllm" / VLLM / "generation_attention_perf.parquet")
    custom = pd.read_parquet(d / "comm" / "vllm" / VLLM / "custom_allreduce_perf.parquet")
    nccl = pd.read_parquet(d / "comm" / "nccl" / NCCL / "nccl_perf.parquet")
    ms = sorted(int(m) for m in gemm.m.unique())
    models: dict[str, Any] = {}
    for arch in ARCHITECTURES.values():
        per_tp = {str(tp): _one(arch, tp, gemm, ms, ctx, gen, custom, nccl) for tp in TPS}
        models[arch.name] = {tp: v for tp, v in per_tp.items() if v is not None}
    return {"format": "wattgate-kernel-timings", "version": 1, "origin": ORIGIN, "models": models}


def _one(  # noqa: PLR0917  (the parsed tables, passed on)
    arch: Architecture,
    tp: int,
    gemm: pd.DataFrame,
    ms: list[int],
    ctx: pd.DataFrame,
    gen: pd.DataFrame,
    custom: pd.DataFrame,
    nccl: pd.DataFrame,
) -> dict[str, Any] | None:
    """One architecture at one TP; None where aiconfigurator measured no attention for its head counts."""
    heads, kv = arch.heads_per_gpu(tp)
    pre_table = _attention(ctx, heads, kv, arch.head_dim, "isl")
    dec = _attention(gen, heads, kv, arch.head_dim, "step")
    if pre_table is None or dec is None:
        return None
    pre = pre_table.loc[1]
    linear = sum(_gemm_curve(gemm, ms, n, k) for n, k in arch.gemm_shapes(tp))
    lm = _gemm_curve(gemm, ms, *arch.lm_head_shape(tp))
    out: dict[str, Any] = {
        "tokens": ms,
        "linear_per_layer_s": [round(float(v), 9) for v in linear],
        "lm_head_s": [round(float(v), 9) for v in lm],
        "prefill_attention_per_layer": {
            "isl": [int(i) for i in pre.index],
            "s": [round(float(v) / 1e3, 9) for v in pre.to_numpy()],
        },
        "decode_attention_per_layer": {
            "batch": [int(b) for b in dec.index],
            "kv_len": [int(s) + 1 for s in dec.columns],  # the table's "step" is the tokens already cached
            "s": [[None if np.isnan(v) else round(float(v) / 1e3, 9) for v in row] for row in dec.to_numpy()],
        },
    }
    if tp > 1:
        out["allreduce"] = _allreduce(custom, nccl, tp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true", help="exit 1 if the shipped file differs from a fresh extraction")
    args = p.parse_args(argv)
    text = json.dumps(extract(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} differs from a fresh extraction", file=sys.stderr)
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
