"""Send the schedule through the gateway's OpenAI API, concurrently, timing each stream at the client.

The replay speaks the OpenAI wire format itself (httpx, server-sent events parsed as bytes) rather than
through the ``openai`` client: on a small machine that client's per-chunk objects cost enough event-loop
time to delay other streams' first tokens, which the client timers would then count as the cluster's
latency. The lag of this event loop is measured (a ticker) and reported, so a reader can tell the two
apart; ``tests/demo`` still checks the gateway with the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from wattgate.classifier.features import FeatureExtractor
from wattgate.demo.trace import Scheduled

_WORDS = ("the", "power", "of", "a", "model", "and", "energy", "to", "in", "serve", "each", "request", "with")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # what the openai client retries
ATTEMPTS = 4
LAG_TICK_S = 0.05


@dataclass(frozen=True)
class Result:
    req: Scheduled
    ok: bool
    ttft_s: float | None  # measured at the client (from the first attempt's send)
    tbt_s: float | None  # mean time between content chunks, measured at the client
    output_tokens: int
    error: str = ""
    pool: str = ""  # the pool the gateway served it from (x-wattgate-pool)
    instance: str = ""
    engine: dict[str, Any] = field(default_factory=dict)  # the engine's own wattgate_sim figures (modelled)
    attempts: int = 1


@dataclass
class Progress:
    total: int
    sent: int = 0
    done: int = 0
    failed: int = 0
    results: list[Result] = field(default_factory=list)


@dataclass
class LoopLag:
    """How late the replay's event loop wakes a ``LAG_TICK_S`` sleeper (measured): client-side delay that
    the client timers would add to every TTFT."""

    samples_s: list[float] = field(default_factory=list)

    async def watch(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self.samples_s.append(max(0.0, time.monotonic() - t - LAG_TICK_S))

    def summary(self) -> dict[str, Any]:
        s = sorted(self.samples_s)
        if not s:
            return {"samples": 0, "source": "measured"}
        return {
            "samples": len(s),
            "mean_s": sum(s) / len(s),
            "p99_s": p99(s),
            "max_s": s[-1],
            "source": "measured (event-loop wake-up delay of the replay client)",
        }


def p99(values: list[float]) -> float | None:
    """The nearest-rank 99th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class Prompts:
    """Filler prompts fitted once per input length, so the gateway counts the trace's input tokens (its
    token counter and chat framing, the same code the gateway runs)."""

    def __init__(self, model: str) -> None:
        self._fx = FeatureExtractor()
        self._model = model
        self._cache: dict[int, str] = {}

    def counted(self, text: str) -> int:
        body = {"model": self._model, "messages": [{"role": "user", "content": text}]}
        return self._fx.extract(body, "chat").input_tokens

    def get(self, input_tokens: int) -> str:
        text = self._cache.get(input_tokens)
        if text is None:
            text = self._cache[input_tokens] = self._fit(input_tokens)
        return text

    def fill(self, lengths: Iterable[int]) -> None:
        for n in set(lengths):
            self.get(n)

    def _fit(self, target: int) -> str:
        n = max(1, target - 7)
        for _ in range(8):  # counts move about one token per word: a few steps reach the target
            text = filler(n)
            got = self.counted(text)
            if got == target or (got > target and n == 1):
                return text
            n = max(1, n + target - got)
        return filler(n)


def filler(words: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(words))


def _event_json(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


async def one(client: httpx.AsyncClient, model: str, req: Scheduled, text: str) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": req.output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "wattgate_sim": {"input_tokens": req.input_tokens, "output_tokens": req.output_tokens},
    }
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer demo"}
    started = time.monotonic()
    error = ""
    for attempt in range(1, ATTEMPTS + 1):
        responded = False
        try:
            async with client.stream("POST", "/v1/chat/completions", content=raw, headers=headers) as resp:
                responded = True
                if resp.status_code != 200:
                    detail = (await resp.aread())[:160].decode(errors="replace")
                    error = f"HTTP {resp.status_code}: {detail}"
                    if resp.status_code in RETRY_STATUS and attempt < ATTEMPTS:
                        await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                        continue
                    break
                return await _read_stream(resp, req, started, attempt)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            # no response yet (e.g. a keep-alive connection the server closed as it was reused): send again,
            # as the openai client does; a stream broken after its headers is a failure
            if attempt < ATTEMPTS and not responded and isinstance(exc, httpx.TransportError):
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                continue
            break
    return Result(req, False, None, None, 0, error[:200], attempts=attempt)


async def _read_stream(resp: httpx.Response, req: Scheduled, started: float, attempt: int) -> Result:
    first: float | None = None
    last = started
    chunks = tokens = 0
    engine: dict[str, Any] = {}
    buf = b""
    async for piece in resp.aiter_raw():
        now = time.monotonic()
        buf += piece
        *events, buf = buf.split(b"\n\n")
        for ev in events:
            doc = _event_json(ev)
            if doc is None:
                continue
            choices = doc.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                first = first if first is not None else now
                last = now
                chunks += 1
            if isinstance(doc.get("wattgate_sim"), dict):
                engine = doc["wattgate_sim"]
            if isinstance(doc.get("usage"), dict):
                tokens = int(doc["usage"].get("completion_tokens") or 0)
    ttft = None if first is None else first - started
    tbt = (last - first) / (chunks - 1) if first is not None and chunks > 1 else None
    pool, inst = resp.headers.get("x-wattgate-pool", ""), resp.headers.get("x-wattgate-instance", "")
    error = "" if first is not None else "the stream ended without a token"
    return Result(req, first is not None, ttft, tbt, tokens or chunks, error, pool, inst, engine, attempt)


def http_client(base_url: str) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=30.0)
    # idle connections are dropped before the gateway's (uvicorn's) 5 s keep-alive closes them under a request
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200, keepalive_expiry=4.0)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, trust_env=False)


async def warm_up(client: httpx.AsyncClient, connections: int = 16) -> None:
    """Open keep-alive connections before the clock starts (TCP set-up is the client's cost, not the cluster's)."""
    await asyncio.gather(*(client.get("/health") for _ in range(connections)), return_exceptions=True)


async def replay(
    base_url: str,
    model: str,
    plan: list[Scheduled],
    progress: Progress,
    on_result: Callable[[Result], None],
    *,
    lag: LoopLag | None = None,
) -> None:
    """Send each request at its time (never waiting for earlier ones) and wait for all answers."""
    prompts = Prompts(model)
    prompts.fill(r.input_tokens for r in plan)
    async with http_client(base_url) as client:
        await warm_up(client)
        watcher = asyncio.create_task(lag.watch()) if lag is not None else None
        start = time.monotonic()
        tasks: list[asyncio.Task[None]] = []

        async def run(req: Scheduled) -> None:
            res = await one(client, model, req, prompts.get(req.input_tokens))
            progress.done += 1
            progress.failed += 0 if res.ok else 1
            progress.results.append(res)
            on_result(res)

        try:
            for req in plan:
                delay = start + req.send_at_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                progress.sent += 1
                tasks.append(asyncio.create_task(run(req)))
            await asyncio.gather(*tasks)
        finally:
            if watcher is not None:
                watcher.cancel()
