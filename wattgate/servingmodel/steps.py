"""The time one engine step takes, from measured kernels plus fitted overheads, at any SM clock.

A step of a vLLM-style engine runs every scheduled token through every layer at once. Its time on
one GPU of a TP group, at the maximum clock, is the sum of (per layer, ``L`` layers):

- the four linear layers (GEMMs) for ``T`` tokens, measured (``kernels``);
- the small element-wise kernels (two fused add+RMSNorms, rotary embedding, SiLU-and-multiply),
  modelled from the bytes they move at the H100's effective bandwidth (aiconfigurator's system
  spec: 3.35 TB/s x 0.8);
- two all-reduces of ``T x hidden`` bf16 values (TP > 1), measured;
- attention: decode sequences read their whole KV cache (measured: a floor per batch plus a cost
  per KV token read); a prefill chunk of ``c`` tokens after ``p`` cached ones costs
  ``F(p + c) - F(p)`` where ``F(n)`` is the measured causal attention over ``n`` tokens;

plus the language-model head for the sampled tokens (measured) and the overheads that no kernel
timing contains (``EngineOverheads``, fitted to measured vLLM serving curves).

**What each second is doing** (``StepTime``, for the power model): a GEMM's compute-bound part is its
tokens times the per-token cost of the largest measured GEMM (where it is compute-bound), capped at its
measured time; of the rest, the time to stream the layer's weights once at the effective HBM bandwidth
is memory-bound and anything beyond is latency-bound (small kernels that reach neither roofline: 0.6
ms of a 7 ms TP8 decode step's GEMMs, none at TP2, where the measured GEMMs stream at the full
effective bandwidth). Prefill attention is compute-bound; decode attention's per-KV-token cost and the
element-wise kernels are memory-bound; decode attention's per-batch floor (about 1 ms a step at every
TP) is latency-bound; the all-reduces are communication (``comm_s``); the overheads are CPU time.

**SM clock** (``ClockLaw``). The compute-bound part slows as ``(f_max / f) ** compute_exp``. The
memory-bound part does not slow until the clock falls below a knee, then as ``(knee / f) ** memory_exp``:
HBM runs on its own clock, so a bandwidth-bound kernel keeps its speed until the SMs (and the L2 and
crossbar, on the SM clock) can no longer issue loads fast enough to keep HBM busy. The latency-bound and
communication parts (fixed cycle counts: kernel ramp-up and tails, synchronisation, small all-reduces)
slow as ``(f_max / f) ** latency_exp``. Overheads (CPU) do not depend on the GPU clock. The knee and
exponents are fitted to the DynamoLLM characterization's TTFT and time between tokens per clock
(``calibration``); with no knee (``memory_knee_mhz`` 0) and no ``latency_exp`` the law is the earlier
plain one, memory-bound, latency-bound and communication time all as ``(f_max / f) ** memory_exp``.

Everything here is modelled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from wattgate.servingmodel.arch import BYTES_BF16, Architecture
from wattgate.servingmodel.kernels import KernelCurves, loglog

HBM_BYTES_PER_S = 3.35e12 * 0.8  # aiconfigurator-core's H100 SXM spec: 3.35 TB/s x empirical factor 0.8
TABLE_TOKENS = 16384  # tokens per step precomputed; larger steps are computed on demand
PREFILL_TOKENS = 131072  # prompt lengths for which prefill attention is precomputed


@dataclass(frozen=True)
class EngineOverheads:
    """Costs the kernel timings do not contain (seconds); fitted, see ``calibration``."""

    step_s: float = 0.0  # per step: scheduling, the Python between steps
    sequence_s: float = 0.0  # per scheduled sequence per step: sampling, detokenizing, output processing
    layer_s: float = 0.0  # per layer per step: launch gaps and the kernels not timed
    prefill_layer_s: float = 0.0  # extra per layer in a step that prefills (outside the CUDA graphs)
    request_s: float = 0.0  # per request before its first token: HTTP, tokenization, detokenization
    # every kernel's time (compute, memory, all-reduce, latency-bound) relative to the measured kernels (vLLM
    # 0.24's): 1.0 for the engine they were measured under, more for an older, slower one
    kernel_scale: float = 1.0


ClockFactors = tuple[float, float, float]  # how much longer compute-, memory- and latency-bound time take


@dataclass(frozen=True)
class ClockLaw:
    """How a step's compute-, memory- and latency-bound parts slow down below the maximum SM clock (see the
    module docstring): ``factors(f)`` is ``((f_max/f)^compute_exp, max(1, knee/f)^memory_exp,
    (f_max/f)^latency_exp)``, the latency-bound factor (all-reduces too) the memory-bound one where
    ``latency_exp`` is None, the knee ``f_max`` where ``memory_knee_mhz`` is 0."""

    compute_exp: float = 1.0
    memory_exp: float = 0.0
    max_clock_mhz: int = 1980
    memory_knee_mhz: float = 0.0
    latency_exp: float | None = None

    def factors(self, clock_mhz: float) -> ClockFactors:
        return _factors(self, clock_mhz)


@functools.cache
def _factors(law: ClockLaw, clock_mhz: float) -> ClockFactors:
    f = max(min(clock_mhz, law.max_clock_mhz), 1.0)
    r = law.max_clock_mhz / f
    memory = max((law.memory_knee_mhz or law.max_clock_mhz) / f, 1.0) ** law.memory_exp
    latency = memory if law.latency_exp is None else r**law.latency_exp
    return r**law.compute_exp, memory, latency


class StepTime(NamedTuple):
    """One step (or a run of identical decode steps): seconds spent compute-bound, memory-bound, on overhead,
    and in the all-reduces (communication over NVLink; zero at TP1). A named tuple, not a frozen dataclass:
    the engine makes one per step or run of steps, and a tuple is made several times faster."""

    compute_s: float
    memory_s: float
    overhead_s: float
    comm_s: float = 0.0
    latency_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.memory_s + self.overhead_s + self.comm_s + self.latency_s

    def scaled(self, frac: float) -> StepTime:
        """The first ``frac`` of this step (each part in proportion)."""
        return StepTime(
            self.compute_s * frac,
            self.memory_s * frac,
            self.overhead_s * frac,
            self.comm_s * frac,
            self.latency_s * frac,
        )


class StepCost:
    """Step times of one architecture at one TP (see the module docstring)."""

    def __init__(self, arch: Architecture, tp: int, curves: KernelCurves, overheads: EngineOverheads) -> None:
        self.arch, self.tp, self.overheads = arch, tp, overheads
        self.layers = arch.layers
        self._curves = curves
        n = np.arange(TABLE_TOKENS + 1, dtype=float)
        lin = self._linear(n)
        slope = float(curves.linear_per_layer_s[-1] / curves.tokens[-1])  # compute-bound cost per token
        self._lin_comp = np.minimum(lin, n * slope) * self.layers
        self._lin_mem = lin * self.layers - self._lin_comp
        # of the rest, what streaming the layer's weights once at the effective bandwidth takes is
        # bandwidth-bound; anything beyond is latency-bound (small kernels that reach neither roofline)
        weights_s = sum(a * b for a, b in arch.gemm_shapes(tp)) * BYTES_BF16 / HBM_BYTES_PER_S * self.layers
        self._lin_lat = np.maximum(self._lin_mem - weights_s, 0.0)
        self._lin_mem -= self._lin_lat
        heads, kv = arch.heads_per_gpu(tp)
        ew_bytes = BYTES_BF16 * (8 * arch.hidden + 2 * (heads + kv) * arch.head_dim + 3 * arch.intermediate // tp)
        self._ew = n * ew_bytes / HBM_BYTES_PER_S * self.layers
        self._ar = self._allreduce(n) * 2 * self.layers
        lm = loglog(curves.tokens, curves.lm_head_s, np.maximum(n, 1.0))
        lm_slope = float(curves.lm_head_s[-1] / curves.tokens[-1])
        self._lm_comp = np.minimum(lm, n * lm_slope)
        self._lm_mem = lm - self._lm_comp
        self._lm_comp[0] = self._lm_mem[0] = 0.0
        self._lin_comp[0] = self._lin_mem[0] = self._lin_lat[0] = self._ew[0] = self._ar[0] = 0.0
        self.kv_token_s = curves.decode.per_kv_token_s * self.layers
        self._base_cache: dict[tuple[int, ClockFactors], DecodeSteps] = {}
        # causal attention over n tokens (all layers), dense up to PREFILL_TOKENS: looked up per chunk
        self._attn = loglog(
            curves.prefill_isl, curves.prefill_per_layer_s, np.maximum(np.arange(PREFILL_TOKENS + 1), 1.0)
        )
        self._attn *= self.layers
        self._attn_floor = float(curves.prefill_per_layer_s[0]) * self.layers
        dec = curves.decode
        floor = np.interp(np.log(np.maximum(n, 1.0)), np.log(dec.batch), dec.floor_s) * self.layers
        floor[0] = 0.0
        self._floor = floor.tolist()
        # plain lists: indexing them is several times faster than numpy scalars on the hot path
        self._lc, self._lm_, self._lcm, self._lmm = (
            self._lin_comp.tolist(),
            self._lin_mem.tolist(),
            self._lm_comp.tolist(),
            (self._lm_mem).tolist(),
        )
        self._ew_list, self._ar_list, self._lat_list = self._ew.tolist(), self._ar.tolist(), self._lin_lat.tolist()
        self._attn_list = self._attn.tolist()

    def _linear(self, n: np.ndarray) -> np.ndarray:
        c = self._curves
        return loglog(c.tokens, c.linear_per_layer_s, np.maximum(n, 1.0))

    def _allreduce(self, n: np.ndarray) -> np.ndarray:
        c = self._curves
        if self.tp == 1 or c.allreduce_bytes is None or c.allreduce_s is None:
            return np.zeros_like(n)
        nbytes = np.maximum(n, 1.0) * self.arch.hidden * BYTES_BF16
        return loglog(c.allreduce_bytes, c.allreduce_s, nbytes)

    def _token_parts(self, tokens: int, sampled: int) -> tuple[float, float, float, float]:
        """Compute-bound, memory-bound, all-reduce and latency-bound seconds of the per-token kernels, max clock."""
        if tokens <= TABLE_TOKENS and sampled <= TABLE_TOKENS:
            return (
                self._lc[tokens] + self._lcm[sampled],
                self._lm_[tokens] + self._lmm[sampled] + self._ew_list[tokens],
                self._ar_list[tokens],
                self._lat_list[tokens],
            )
        # beyond the table: the GEMMs are compute-bound there; scale the last row
        scale = tokens / TABLE_TOKENS
        comp = self._lin_comp[TABLE_TOKENS] * scale + self._lm_comp[min(sampled, TABLE_TOKENS)]
        mem = self._ew[TABLE_TOKENS] * scale + self._lm_mem[min(sampled, TABLE_TOKENS)]
        return float(comp), float(mem), float(self._ar[TABLE_TOKENS] * scale), 0.0

    def _attention(self, tokens: int) -> float:
        if tokens <= PREFILL_TOKENS:
            return float(self._attn_list[tokens])
        return float(self._attn[PREFILL_TOKENS]) * (tokens / PREFILL_TOKENS) ** 2  # quadratic beyond

    def prefill_attention_s(self, cached: int, chunk: int) -> float:
        """Causal attention of ``chunk`` new tokens after ``cached`` ones, all layers, max clock."""
        hi = self._attention(cached + chunk)
        lo = self._attention(cached) if cached > 0 else 0.0
        return max(hi - lo, self._attn_floor)

    def decode_floor_exact(self, batch: int) -> float:
        return 0.0 if batch <= 0 else self._curves.decode.per_layer_s(batch, 0.0) * self.layers

    def decode_floor_s(self, batch: int) -> float:
        return self._floor[batch] if batch <= TABLE_TOKENS else self.decode_floor_exact(batch)

    def step(
        self,
        *,
        decodes: int,
        kv_tokens: float,
        prefill: tuple[tuple[int, int], ...],
        sampled: int,
        factors: ClockFactors,
    ) -> StepTime:
        """One step: ``decodes`` sequences reading ``kv_tokens`` cached tokens in total, prefill chunks
        ``(cached, chunk)``, ``sampled`` tokens out of the LM head, at clock factors (compute, memory, latency)."""
        tokens = decodes
        comp = 0.0
        for p, c in prefill:
            tokens += c
            comp += self.prefill_attention_s(p, c)
        tc, mem, comm, lat = self._token_parts(tokens, sampled)
        comp += tc
        mem += self.kv_token_s * kv_tokens
        lat += self.decode_floor_s(decodes)
        o = self.overheads
        overhead = o.step_s + o.sequence_s * (decodes + len(prefill))
        overhead += self.layers * (o.layer_s + (o.prefill_layer_s if prefill else 0.0))
        fc, fm, fl = factors
        return StepTime(comp * fc, mem * fm, overhead, comm * fl, lat * fl)

    def decode_steps(self, decodes: int, factors: ClockFactors) -> DecodeSteps:
        """Runs of decode-only steps of ``decodes`` sequences at clock ``factors`` (cached: the hot path asks often)."""
        key = (decodes, factors)
        steps = self._base_cache.get(key)
        if steps is None:
            if len(self._base_cache) > 65536:
                self._base_cache.clear()
            base = self.step(decodes=decodes, kv_tokens=0.0, prefill=(), sampled=decodes, factors=factors)
            steps = self._base_cache[key] = DecodeSteps(base, decodes, self.kv_token_s * factors[1])
        return steps

    def decode_run(self, decodes: int, kv_tokens: float, steps: int, factors: ClockFactors) -> StepTime:
        """``steps`` consecutive decode-only steps of ``decodes`` sequences, the KV cache growing by
        ``decodes`` tokens per step from ``kv_tokens``: the same step with a linearly growing attention term."""
        return self.decode_steps(decodes, factors).run(kv_tokens, steps)

    def decode_steps_within(self, decodes: int, kv_tokens: float, budget_s: float, factors: ClockFactors) -> int:
        """The most consecutive decode-only steps (as in ``decode_run``) that fit in ``budget_s``."""
        return self.decode_steps(decodes, factors).within(kv_tokens, budget_s)


class DecodeSteps:
    """Runs of decode-only steps of one batch size at one clock, in closed form: a step with an empty cache
    (``base``) plus an attention term that reads ``decodes`` more cached tokens each step (``kv_s`` seconds a
    token). ``StepCost.decode_steps`` keeps one per batch size and clock, so an engine's run of steps looks it
    up once."""

    __slots__ = ("base", "decodes", "kv_s")

    def __init__(self, base: StepTime, decodes: int, kv_s: float) -> None:
        self.base, self.decodes, self.kv_s = base, decodes, kv_s

    def run(self, kv_tokens: float, steps: int) -> StepTime:
        """``steps`` consecutive steps from ``kv_tokens`` cached tokens."""
        base = self.base
        kv_read = steps * kv_tokens + self.decodes * steps * (steps - 1) / 2
        return StepTime(
            base.compute_s * steps,
            base.memory_s * steps + self.kv_s * kv_read,
            base.overhead_s * steps,
            base.comm_s * steps,
            base.latency_s * steps,
        )

    def run_s(self, kv_tokens: float, steps: int) -> float:
        """``run(kv_tokens, steps).total_s``, the same arithmetic, without the object."""
        base = self.base
        kv_read = steps * kv_tokens + self.decodes * steps * (steps - 1) / 2
        return (
            base.compute_s * steps
            + (base.memory_s * steps + self.kv_s * kv_read)
            + base.overhead_s * steps
            + base.comm_s * steps
            + base.latency_s * steps
        )

    def within(self, kv_tokens: float, budget_s: float) -> int:
        """The most consecutive steps from ``kv_tokens`` cached tokens that fit in ``budget_s``."""
        if budget_s <= 0:
            return 0
        run_s = self.run_s
        a = self.base.total_s + self.kv_s * kv_tokens
        b = self.kv_s * self.decodes  # each step reads ``decodes`` more cached tokens
        # k*a + b*k*(k-1)/2 <= budget: the positive root, then exact on the integers (rounding)
        if b <= 0:
            k = int(budget_s / a)
        else:
            qb = a - b / 2
            k = int((-qb + math.sqrt(qb * qb + 2 * b * budget_s)) / b)
        k = max(k, 0)
        while k > 0 and run_s(kv_tokens, k) > budget_s:
            k -= 1
        while run_s(kv_tokens, k + 1) <= budget_s:
            k += 1
        return k
