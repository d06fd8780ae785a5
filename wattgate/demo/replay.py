"""Send the schedule through the gateway with the official ``openai`` client, concurrently, timing each stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wattgate.demo.trace import Scheduled

_WORDS = ("the", "power", "of", "a", "model", "and", "energy", "to", "in", "serve", "each", "request", "with")


@dataclass(frozen=True)
class Result:
    req: Scheduled
    ok: bool
    ttft_s: float | None  # measured at the client
    tbt_s: float | None  # mean time between content chunks, measured at the client
    output_tokens: int
    error: str = ""


@dataclass
class Progress:
    total: int
    sent: int = 0
    done: int = 0
    failed: int = 0
    results: list[Result] = field(default_factory=list)


def prompt(input_tokens: int) -> str:
    """Filler text of about ``input_tokens`` tokens (one common word is one token)."""
    n = max(1, input_tokens - 8)
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(n))


async def one(client: object, model: str, req: Scheduled) -> Result:
    from openai import APIError  # noqa: PLC0415

    started = time.monotonic()
    first: float | None = None
    last = started
    chunks = 0
    tokens = 0
    try:
        stream = await client.chat.completions.create(  # type: ignore[attr-defined]
            model=model,
            messages=[{"role": "user", "content": prompt(req.input_tokens)}],
            max_tokens=req.output_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"wattgate_sim": {"input_tokens": req.input_tokens, "output_tokens": req.output_tokens}},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.monotonic()
                first = first if first is not None else now
                last = now
                chunks += 1
    except (APIError, OSError) as exc:
        return Result(req, False, None, None, 0, f"{type(exc).__name__}: {exc}"[:200])
    ttft = None if first is None else first - started
    tbt = (last - first) / (chunks - 1) if first is not None and chunks > 1 else None
    return Result(req, first is not None, ttft, tbt, tokens or chunks)


async def replay(
    base_url: str, model: str, plan: list[Scheduled], progress: Progress, on_result: Callable[[Result], None]
) -> None:
    """Send each request at its time (never waiting for earlier ones) and wait for all answers."""
    import httpx  # noqa: PLC0415
    from openai import AsyncOpenAI  # noqa: PLC0415

    timeout = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="demo",
        max_retries=3,
        timeout=timeout,
        http_client=httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False),
    ) as client:
        start = time.monotonic()
        tasks: list[asyncio.Task[None]] = []

        async def run(req: Scheduled) -> None:
            res = await one(client, model, req)
            progress.done += 1
            progress.failed += 0 if res.ok else 1
            progress.results.append(res)
            on_result(res)

        for req in plan:
            delay = start + req.send_at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            progress.sent += 1
            tasks.append(asyncio.create_task(run(req)))
        await asyncio.gather(*tasks)
