"""Measured kernel latencies of one GPU type (vLLM 0.24.0 on H100, from aiconfigurator-core), per architecture and TP.

The JSON is written by ``scripts/extract_kernel_timings.py`` (origin, licence and tables in its
``origin``). Curves here are smoothed only where the measurements say a larger problem ran faster:
GEMM time is made non-decreasing in tokens (pool-adjacent-violators, the least-squares monotone fit)
because per-tile jitter of ±10 % between neighbouring token counts is not a property an engine
model should inherit. Interpolation is log-log between measured sizes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from wattgate.servingmodel.errors import ServingModelError

FORMAT = "wattgate-kernel-timings"
_PACKAGE = "wattgate.servingmodel.data"
DEFAULT_KERNELS = "kernels-h100-sxm.json"


def isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool-adjacent-violators), equal weights."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values.tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def loglog(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Interpolate log-log; beyond the last point extend the last segment's slope (power law)."""
    lx, ly = np.log(xs), np.log(np.maximum(ys, 1e-12))
    q = np.log(np.maximum(x, xs[0]))
    out = np.interp(q, lx, ly)
    slope = (ly[-1] - ly[-2]) / (lx[-1] - lx[-2])
    over = q > lx[-1]
    out[over] = ly[-1] + slope * (q[over] - lx[-1])
    result: np.ndarray = np.exp(out)
    return result


@dataclass(frozen=True)
class DecodeAttention:
    """Decode attention per layer: ``floor(batch) + per_kv_token_s * total KV tokens read`` (memory-bound).

    ``per_kv_token_s`` is the median marginal cost over measured points that read at least 64K KV
    tokens in total (where the kernel is bandwidth-bound); ``floor`` is the latency at the shortest
    measured KV length for each batch.
    """

    batch: np.ndarray
    floor_s: np.ndarray
    per_kv_token_s: float

    @classmethod
    def from_table(cls, doc: dict[str, Any]) -> DecodeAttention:
        batch = np.array(doc["batch"], float)
        kv = np.array(doc["kv_len"], float)
        grid = np.array([[np.nan if v is None else v for v in row] for row in doc["s"]], float)
        floor = grid[:, 0]
        slopes = []
        for i, b in enumerate(batch):
            for j, s in enumerate(kv):
                if not np.isnan(grid[i, j]) and b * s >= 65536:
                    slopes.append((grid[i, j] - floor[i]) / (b * s))
        if not slopes:
            raise ServingModelError("decode attention table has no bandwidth-bound points")
        return cls(batch, floor, float(np.median(slopes)))

    def per_layer_s(self, batch: int, kv_tokens: float) -> float:
        floor = float(np.interp(np.log(max(batch, 1)), np.log(self.batch), self.floor_s))
        return floor + self.per_kv_token_s * kv_tokens


@dataclass(frozen=True)
class KernelCurves:
    """The measured pieces of one engine step for one architecture at one TP, on one GPU of the group."""

    tokens: np.ndarray
    linear_per_layer_s: np.ndarray  # the four GEMMs of a layer, by tokens in the step (monotone)
    lm_head_s: np.ndarray  # by sampled tokens
    prefill_isl: np.ndarray
    prefill_per_layer_s: np.ndarray  # causal attention over a whole prompt of isl tokens, batch 1
    decode: DecodeAttention
    allreduce_bytes: np.ndarray | None
    allreduce_s: np.ndarray | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> KernelCurves:
        ar = doc.get("allreduce")
        pre = doc["prefill_attention_per_layer"]
        return cls(
            tokens=np.array(doc["tokens"], float),
            linear_per_layer_s=isotonic(np.array(doc["linear_per_layer_s"], float)),
            lm_head_s=isotonic(np.array(doc["lm_head_s"], float)),
            prefill_isl=np.array(pre["isl"], float),
            prefill_per_layer_s=isotonic(np.array(pre["s"], float)),
            decode=DecodeAttention.from_table(doc["decode_attention_per_layer"]),
            allreduce_bytes=None if ar is None else np.array(ar["bytes"], float),
            allreduce_s=None if ar is None else isotonic(np.array(ar["s"], float)),
        )


@functools.cache
def _document(name: str) -> dict[str, Any]:
    try:
        text = resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
        doc: dict[str, Any] = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ServingModelError(f"cannot read kernel timings {name}: {exc}") from exc
    if doc.get("format") != FORMAT or doc.get("version") != 1:
        raise ServingModelError(f"{name} is not a {FORMAT} v1 document")
    return doc


def kernel_origin(name: str = DEFAULT_KERNELS) -> dict[str, Any]:
    origin: dict[str, Any] = _document(name)["origin"]
    return origin


@functools.cache
def kernel_curves(arch: str, tp: int, name: str = DEFAULT_KERNELS) -> KernelCurves:
    models = _document(name)["models"]
    if arch not in models:
        raise ServingModelError(f"no kernel timings for {arch} in {name} (has {', '.join(models)})")
    if str(tp) not in models[arch]:
        raise ServingModelError(f"no kernel timings for {arch} at TP{tp} (has TP {', '.join(models[arch])})")
    return KernelCurves.from_doc(models[arch][str(tp)])
