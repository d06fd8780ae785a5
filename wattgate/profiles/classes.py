"""Request classes, pool names, class edges and SLO targets: the vocabulary every package shares."""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field


class ProfilesError(Exception):
    """Base exception of the profiles package."""


class LengthClass(enum.StrEnum):
    """Short, medium or long: used for both the input and the output side of a request."""

    S = "S"
    M = "M"
    L = "L"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {LengthClass.S: 0, LengthClass.M: 1, LengthClass.L: 2}
LENGTH_CLASSES: tuple[LengthClass, ...] = (LengthClass.S, LengthClass.M, LengthClass.L)


@dataclass(frozen=True, order=True)
class RequestType:
    """Input class x output class, e.g. ``SM``. Also the name of the pool tuned for that type."""

    input: LengthClass
    output: LengthClass

    @functools.cached_property
    def name(self) -> str:  # cached: the router asks for it on every request
        return f"{self.input.value}{self.output.value}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> RequestType:
        text = name.strip().upper()
        if len(text) != 2 or text[0] not in "SML" or text[1] not in "SML":
            raise ProfilesError(f"unknown request type {name!r}: expected two letters of S/M/L, e.g. 'SM'")
        return cls(LengthClass(text[0]), LengthClass(text[1]))


REQUEST_TYPES: tuple[RequestType, ...] = tuple(RequestType(i, o) for i in LENGTH_CLASSES for o in LENGTH_CLASSES)
POOL_NAMES: tuple[str, ...] = tuple(t.name for t in REQUEST_TYPES)


def spill_chain(rtype: RequestType) -> tuple[RequestType, ...]:
    """Pools that may serve ``rtype`` in order of preference, ``rtype`` itself first.

    A pool tuned for longer outputs (same input class) comes first (SS -> SM -> SL), then pools of
    longer input classes, again from the same output class upward. Never a shorter class: a pool
    tuned for shorter requests would miss the latency targets of longer ones.
    """
    chain: list[RequestType] = []
    for i in LENGTH_CLASSES[rtype.input.rank :]:
        for o in LENGTH_CLASSES[rtype.output.rank :]:
            chain.append(RequestType(i, o))
    return tuple(chain)


@dataclass(frozen=True)
class ClassEdges:
    """Token-count edges between classes: ``n <= short_max`` is S, ``n <= medium_max`` is M, else L.

    Defaults are the 33rd/67th percentiles of the Azure conversation trace (DESIGN.md).
    """

    input_short_max: int = 408
    input_medium_max: int = 1109
    output_short_max: int = 94
    output_medium_max: int = 371

    def __post_init__(self) -> None:
        for side, lo, hi in (
            ("input", self.input_short_max, self.input_medium_max),
            ("output", self.output_short_max, self.output_medium_max),
        ):
            if not 0 < lo < hi:
                raise ProfilesError(f"{side} class edges must satisfy 0 < short_max < medium_max, got {lo}, {hi}")

    def input_class(self, tokens: int) -> LengthClass:
        return _classify(tokens, self.input_short_max, self.input_medium_max)

    def output_class(self, tokens: int) -> LengthClass:
        return _classify(tokens, self.output_short_max, self.output_medium_max)

    def request_type(self, input_tokens: int, output_tokens: int) -> RequestType:
        return RequestType(self.input_class(input_tokens), self.output_class(output_tokens))

    def output_upper(self, cls: LengthClass) -> int | None:
        """The largest output token count of class ``cls`` (None for L: unbounded)."""
        return {LengthClass.S: self.output_short_max, LengthClass.M: self.output_medium_max}.get(cls)


def _classify(tokens: int, short_max: int, medium_max: int) -> LengthClass:
    if tokens <= short_max:
        return LengthClass.S
    if tokens <= medium_max:
        return LengthClass.M
    return LengthClass.L


def _default_ttft() -> dict[LengthClass, float]:
    # The DynamoLLM prototype's TTFT targets for short / medium / long inputs.
    return {LengthClass.S: 0.25, LengthClass.M: 0.5, LengthClass.L: 1.5}


@dataclass(frozen=True)
class SloTargets:
    """P99 latency targets per request type: TTFT by input class, TBT for every type.

    ``tbt_p99_s`` is judged on each request's time per output token after the first (TPOT, what vLLM's
    benchmark reports). Its default, 0.15 s, is the paper's rule (5x the unloaded latency) applied to
    splitwise-sim's measured batch-1 decode step of Llama-2-70B at TP8 on H100 (29.76 ms in its
    perf_model.csv). A current vLLM decodes that model faster (about 12 ms per token at TP8, in the
    serving model and in vLLM's own benchmark of Llama-3.1-70B), so the default is loose: set the target
    that your users need.
    """

    ttft_p99_s: dict[LengthClass, float] = field(default_factory=_default_ttft)
    tbt_p99_s: float = 0.15

    def __post_init__(self) -> None:
        if set(self.ttft_p99_s) != set(LENGTH_CLASSES):
            raise ProfilesError("SLO TTFT targets must name S, M and L input classes")
        if min(self.ttft_p99_s.values()) <= 0 or self.tbt_p99_s <= 0:
            raise ProfilesError("SLO targets must be positive seconds")

    def ttft_for(self, rtype: RequestType) -> float:
        return self.ttft_p99_s[rtype.input]

    def met(self, rtype: RequestType, ttft_s: float, tbt_s: float | None) -> bool:
        """Whether a TTFT and a time between tokens (None: no second token) are within ``rtype``'s targets."""
        return ttft_s <= self.ttft_for(rtype) and (tbt_s is None or tbt_s <= self.tbt_p99_s)

    def __iter__(self) -> Iterator[tuple[RequestType, float, float]]:
        for t in REQUEST_TYPES:
            yield t, self.ttft_for(t), self.tbt_p99_s
