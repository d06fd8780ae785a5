"""A lean HTTP/1.1 load generator (raw asyncio streams, keep-alive) for the overhead benchmark.

It runs in its own process so it does not steal the gateway's CPU, and is deliberately thin so
that its own cost is small next to what it measures. Prints one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import uvloop


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def _open(host: str, port: int) -> Conn:
    reader, writer = await asyncio.open_connection(host, port)
    return Conn(reader, writer)


async def one(conn: Conn, request: bytes) -> tuple[float, float, int]:
    """Send one request; return (time to first body byte, total time, status)."""
    t0 = time.perf_counter()
    conn.writer.write(request)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    first = 0.0
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).strip(), 16)
            if not first:
                first = time.perf_counter() - t0
            await conn.reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        start = lower.index(b"content-length:") + 15
        length = int(lower[start : lower.index(b"\r\n", start)])
        await conn.reader.readexactly(length)
        first = time.perf_counter() - t0
    return first, time.perf_counter() - t0, status


def build_request(url: str, stream: bool, max_tokens: int = 8) -> tuple[str, int, bytes]:
    """The benchmark's request; ``max_tokens=0`` leaves the field out (the classifier then runs in full)."""
    parts = urlsplit(url)
    doc: dict[str, object] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hello in one short line."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if not max_tokens:
        del doc["max_tokens"]
    body = json.dumps(doc).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAuthorization: Bearer bench\r\n\r\n"
    ).encode()
    return parts.hostname or "127.0.0.1", parts.port or 80, head + body


async def fixed_rate(url: str, stream: bool, rate: float, duration_s: float, max_tokens: int) -> dict[str, object]:
    host, port, request = build_request(url, stream, max_tokens)
    idle: list[Conn] = [await _open(host, port) for _ in range(32)]
    results: list[tuple[float, float, int]] = []
    errors = 0

    async def fire() -> None:
        nonlocal errors
        conn = idle.pop() if idle else await _open(host, port)
        try:
            results.append(await one(conn, request))
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn.writer.close()

    for _ in range(20):  # warm up
        await fire()
    results.clear()
    tasks = []
    start = time.perf_counter()
    n = int(rate * duration_s)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire()))
    await asyncio.gather(*tasks)
    for c in idle:
        c.writer.close()
    return {
        "n": len(results),
        "errors": errors,
        "ttfb_s": [r[0] for r in results],
        "total_s": [r[1] for r in results],
        "bad_status": sum(r[2] != 200 for r in results),
    }


async def saturate(url: str, stream: bool, concurrency: int, duration_s: float, max_tokens: int) -> dict[str, object]:
    host, port, request = build_request(url, stream, max_tokens)
    done = 0
    errors = 0
    stop = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done, errors
        conn = await _open(host, port)
        while time.perf_counter() < stop:
            try:
                _, _, status = await one(conn, request)
                done += status == 200
                errors += status != 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                conn = await _open(host, port)
        conn.writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"n": done, "errors": errors, "rps": done / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--duration-s", type=float, default=5)
    p.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request; 0 leaves it out")
    a = p.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if a.rate:
            out = runner.run(fixed_rate(a.url, a.stream, a.rate, a.duration_s, a.max_tokens))
        else:
            out = runner.run(saturate(a.url, a.stream, a.concurrency, a.duration_s, a.max_tokens))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
