"""What wattgate's routing costs inside LiteLLM: CPU per request with wattgate's callback against LiteLLM's own
default strategy (simple-shuffle), same deployments, same run.

Four fast fake OpenAI backends (separate processes) are the deployments of one model group; a real Redis
(separate process) holds them as registry instances of four pools and a plan that sends every request
type to one of them. Legs:

- ``litellm``: LiteLLM's default strategy, no wattgate (the baseline);
- ``litellm+noop``: the same with a callback that does nothing (LiteLLM's cost of having any callback);
- ``wattgate``: ``WattgateRouting`` with the shipped classifier (the default), routing by the plan and
  recording load windows and observations;
- ``wattgate-mt``: the same with the max_tokens classifier only (what the classifier's share is).

``--mode router`` (default) runs ``litellm.Router`` in one worker process per leg (litellm's callback lists
are process-global) and counts the worker's CPU time (``time.process_time``: every thread, the requests'
own client side included) over each leg's requests; ``--mode proxy`` runs one LiteLLM proxy
per leg (scripts/install_litellm_proxy) and counts the proxy process's CPU from /proc while this process
sends the requests. Legs run back to back in each of ``--rounds`` short rounds (the order rotates); the
figures are medians over the rounds of each leg against ``litellm`` in the same round (paired: this
machine's load moves less within a round than between rounds), with the interquartile range. In router
mode the time spent inside wattgate's two hooks is timed too (``in hooks``). Requests are chat
completions with prompts of 40 to 4000 characters and max_tokens of 50, 300 or 1000, so every request
type occurs. All figures are measured (CPU counters, timers); nothing is modelled. Prints a table and
one JSON line.

    .venv/bin/python bench/litellm_routing.py [--mode router|proxy] [--requests 60] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import

import httpx  # noqa: E402

from bench.gateway_overhead import fake_backend  # noqa: E402
from bench.litellm_leg import (  # noqa: E402
    cpu_seconds,
    litellm_installed,
    litellm_proxy_with,
    proxy_pid,
    wattgate_in_proxy,
)
from wattgate.embedded_redis import EmbeddedRedis  # noqa: E402
from wattgate.planner.contract import InstanceRecord, Keys, Plan  # noqa: E402

GROUP = "chat"
MODEL = "fake-model"  # what bench/_fake_server.py serves
POOLS = ("SS", "SM", "MM", "LL")
SERVES = {"SS": ["SS"], "SM": ["SM", "SL"], "MM": ["MS", "MM", "ML"], "LL": ["LS", "LM", "LL"]}
LEGS = ("litellm", "litellm+noop", "wattgate", "wattgate-mt")
NOOP_MODULE = "from litellm.integrations.custom_logger import CustomLogger\n\nnoop = CustomLogger()\n"
HOOK_MS: dict[str, list[float]] = {}  # leg -> per round: ms per request inside wattgate's hooks (router mode)
FAILED: dict[str, int] = {}  # leg -> requests that failed (at most 1% of a round, else the run stops)
WORDS = ("the", "energy", "of", "a", "request", "depends", "on", "its", "input", "and", "output", "length", "gpu")


def prompts(n: int, seed: int = 7) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = int(40 * 100 ** rng.random())  # 40 to 4000 characters, log-uniform
        text = " ".join(rng.choice(WORDS) for _ in range(chars // 5))
        out.append((text[:chars] + "?", rng.choice((50, 300, 1000))))
    return out


def model_list(urls: list[str]) -> list[dict[str, Any]]:
    return [
        {"model_name": GROUP, "litellm_params": {"model": f"openai/{MODEL}", "api_base": u + "/v1", "api_key": "x"}}
        for u in urls
    ]


def publish(redis_url: str, urls: list[str]) -> None:
    import redis  # noqa: PLC0415

    keys = Keys()
    client = redis.Redis.from_url(redis_url)
    try:
        for n, (url, pool) in enumerate(zip(urls, POOLS, strict=True)):
            rec = InstanceRecord(f"i{n}", url, MODEL, pool, "n1", "ready")
            client.hset(keys.instances, rec.id, rec.to_json())
        client.set(keys.plan, Plan(1, time.time(), MODEL, [], {}, 0.0, 0.0, serves=SERVES).to_json())
    finally:
        client.close()


def observations(redis_url: str) -> int:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(Keys().observations))
    finally:
        client.close()


async def closed_loop(call: Callable[[str, int], Awaitable[None]], work: list[tuple[str, int]], conc: int) -> None:
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            text, max_tokens = queue.pop()
            await call(text, max_tokens)

    await asyncio.gather(*(worker() for _ in range(conc)))


# ---------------------------------------------------------------- router mode (one process per leg)


def router_mode(urls: list[str], redis_url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """One worker process per leg (litellm's callback lists are process-global: legs must not share them),
    driven in turns from here."""
    ctx = multiprocessing.get_context("spawn")
    pipes: dict[str, Connection] = {}
    workers = []
    try:
        for leg in LEGS:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=router_worker, args=(leg, urls, redis_url, args.concurrency, theirs))
            proc.start()
            workers.append(proc)
            pipes[leg] = mine
        for leg in LEGS:
            if pipes[leg].recv() != "ready":
                raise RuntimeError(f"worker {leg} did not start")
        cpu: dict[str, list[float]] = {leg: [] for leg in LEGS}
        for r in range(args.rounds):
            for leg in LEGS[r % len(LEGS) :] + LEGS[: r % len(LEGS)]:
                pipes[leg].send((args.requests, r))
                ms, failed, hook_ms = pipes[leg].recv()
                if failed > max(1, args.requests // 100):
                    raise RuntimeError(f"{leg}: {failed} of {args.requests} requests failed")
                FAILED[leg] = FAILED.get(leg, 0) + failed
                cpu[leg].append(ms)
                HOOK_MS.setdefault(leg, []).append(hook_ms)
        for leg in LEGS:
            pipes[leg].send(0)  # stop
            if pipes[leg].recv() != "routed by the plan" and leg.startswith("wattgate"):
                raise RuntimeError(f"{leg}: wattgate did not route by the plan")
        return cpu
    finally:
        for proc in workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


HOOKS_S = [0.0]  # seconds spent in wattgate's hooks this round (a worker's own)


def _timed(cls: Any) -> Any:
    """``WattgateRouting`` with its two hooks timed (thread CPU time: they run on the event loop thread)."""

    class Timed(cls):  # type: ignore[misc,valid-type]
        async def async_filter_deployments(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            out = await super().async_filter_deployments(*args, **kwargs)
            HOOKS_S[0] += time.thread_time() - t0
            return out

        def _finish(self, *args: Any) -> None:
            t0 = time.thread_time()
            super()._finish(*args)
            HOOKS_S[0] += time.thread_time() - t0

    return Timed


def router_worker(leg: str, urls: list[str], redis_url: str, concurrency: int, conn: Connection) -> None:
    asyncio.run(_router_worker(leg, urls, redis_url, concurrency, conn))


async def _router_worker(leg: str, urls: list[str], redis_url: str, concurrency: int, conn: Connection) -> None:
    import litellm  # noqa: PLC0415

    from wattgate.gateway.settings import GatewaySettings  # noqa: PLC0415
    from wattgate.litellm_routing.callback import WattgateRouting  # noqa: PLC0415

    routing = None
    if leg == "litellm+noop":
        from litellm.integrations.custom_logger import CustomLogger  # noqa: PLC0415

        litellm.callbacks = [CustomLogger()]
    elif leg != "litellm":
        classifier = "max_tokens" if leg == "wattgate-mt" else "model"
        routing = _timed(WattgateRouting)(GatewaySettings(redis_url=redis_url, classifier=classifier))
        litellm.callbacks = [routing]
        await routing.start()
    # one retry, as users run it: a kept-alive connection the fake closed between rounds is retried, not failed
    router = litellm.Router(model_list=model_list(urls), num_retries=1, timeout=60)
    failed = 0

    async def call(text: str, max_tokens: int) -> None:
        nonlocal failed
        try:
            await router.acompletion(model=GROUP, messages=[{"role": "user", "content": text}], max_tokens=max_tokens)
        except Exception as exc:  # noqa: BLE001  (counted and reported: a failed request voids the figure)
            failed += 1
            print(f"{leg}: {exc.__class__.__name__}: {str(exc)[:200]}", file=sys.stderr)

    await closed_loop(call, prompts(40, seed=1), concurrency)  # warm-up: clients, tokenizers, first routing
    conn.send("ready")
    while order := await asyncio.to_thread(conn.recv):
        n, seed = order
        work = prompts(n, seed)
        failed = 0
        HOOKS_S[0] = 0.0
        gc.collect()
        t0 = time.process_time()
        await closed_loop(call, work, concurrency)
        conn.send((1000 * (time.process_time() - t0) / n, failed, 1000 * HOOKS_S[0] / n))
    routed = routing is not None and routing.core is not None and routing.core.plan_version == 1
    if routing is not None:
        await routing.aclose()
    conn.send("routed by the plan" if routed else "not routed")


# ---------------------------------------------------------------- proxy mode (one LiteLLM proxy per leg)


def proxy_config(urls: list[str], leg: str) -> str:
    settings: dict[str, Any] = {"num_retries": 1, "request_timeout": 60, "telemetry": False}
    if leg.startswith("wattgate"):
        settings["callbacks"] = ["wattgate.litellm_routing.proxy.wattgate_routing"]
    elif leg == "litellm+noop":
        settings["callbacks"] = ["noop_callback.noop"]  # noop_callback.py, next to the config
    config = {
        "model_list": model_list(urls),
        "litellm_settings": settings,
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    return json.dumps(config)


def proxy_mode(urls: list[str], redis_url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    envs = {
        "litellm": {},
        "litellm+noop": {},
        "wattgate": {"WATTGATE_REDIS_URL": redis_url},
        "wattgate-mt": {"WATTGATE_REDIS_URL": redis_url, "WATTGATE_CLASSIFIER": "max_tokens"},
    }
    with contextlib.ExitStack() as stack:
        bases = {
            leg: stack.enter_context(
                litellm_proxy_with(
                    proxy_config(urls, leg), GROUP, env=envs[leg], files={"noop_callback.py": NOOP_MODULE}
                )
            )
            for leg in LEGS
        }
        return asyncio.run(_drive_proxies(bases, args))


async def _drive_proxies(bases: dict[str, str], args: argparse.Namespace) -> dict[str, list[float]]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    failures: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=60.0, limits=limits, trust_env=False) as client:

        def caller(base: str) -> Callable[[str, int], Awaitable[None]]:
            async def call(text: str, max_tokens: int) -> None:
                body = {"model": GROUP, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
                try:
                    r = await client.post(f"{base}/v1/chat/completions", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if not ok:
                    failures[base] = failures.get(base, 0) + 1

            return call

        for base in bases.values():
            await closed_loop(caller(base), prompts(20, seed=1), args.concurrency)
        cpu: dict[str, list[float]] = {leg: [] for leg in LEGS}
        for r in range(args.rounds):
            for leg in LEGS[r % len(LEGS) :] + LEGS[: r % len(LEGS)]:
                pid = proxy_pid(bases[leg])
                assert pid is not None
                c0 = cpu_seconds(pid)
                failures.pop(bases[leg], None)
                await closed_loop(caller(bases[leg]), prompts(args.requests, r), args.concurrency)
                cpu[leg].append(1000 * (cpu_seconds(pid) - c0) / args.requests)
                failed = failures.get(bases[leg], 0)
                if failed > max(1, args.requests // 100):
                    raise RuntimeError(f"{leg}: {failed} of {args.requests} requests failed")
                FAILED[leg] = FAILED.get(leg, 0) + failed
        return cpu


# ---------------------------------------------------------------- main


def paired(cpu: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per leg: median CPU ms/request over the rounds, and against ``litellm`` in the same round (the legs of a
    round run back to back, so the machine's load moves less between them than between rounds): the median
    ratio, the median added ms/request and its interquartile range."""
    base = cpu["litellm"]
    out: dict[str, dict[str, Any]] = {}
    for leg, values in cpu.items():
        added = [v - b for v, b in zip(values, base, strict=True)]
        quartiles = statistics.quantiles(added, n=4) if len(added) > 1 else [added[0]] * 3
        out[leg] = {
            "cpu_ms": round(statistics.median(values), 3),
            "ratio": round(statistics.median(v / b for v, b in zip(values, base, strict=True)), 3),
            "added_ms": round(statistics.median(added), 3),
            "added_iqr_ms": [round(quartiles[0], 3), round(quartiles[2], 3)],
        }
        if HOOK_MS.get(leg) and leg.startswith("wattgate"):
            out[leg]["in_hooks_ms"] = round(statistics.median(HOOK_MS[leg]), 3)
    return out


@contextlib.contextmanager
def fixtures(n: int) -> Iterator[tuple[list[str], str]]:
    server = EmbeddedRedis().start()
    try:
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(fake_backend()) for _ in range(n)]
            publish(server.url, urls)
            yield urls, server.url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("router", "proxy"), default="router")
    parser.add_argument("--requests", type=int, default=60, help="requests per leg and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if args.mode == "proxy" and not (litellm_installed() and wattgate_in_proxy()):
        print("litellm_routing: the LiteLLM proxy (with wattgate) is not installed: run scripts/install_litellm_proxy")
        return 1
    with fixtures(len(POOLS)) as (urls, redis_url):
        before = observations(redis_url)
        cpu = router_mode(urls, redis_url, args) if args.mode == "router" else proxy_mode(urls, redis_url, args)
        recorded = observations(redis_url) - before
    summary = paired(cpu)
    print(f"{'leg':<14}{'CPU ms/req':>11}{'x litellm':>11}{'added ms/req':>14}{'  (IQR)':<18}{'in hooks':>10}")
    for leg in LEGS:
        row = summary[leg]
        lo, hi = row["added_iqr_ms"]
        hooks = f"{row['in_hooks_ms']:.3f}" if "in_hooks_ms" in row else "-"
        print(
            f"{leg:<14}{row['cpu_ms']:>11.2f}{row['ratio']:>11.3f}{row['added_ms']:>14.2f}"
            f"{f'  ({lo:.2f} .. {hi:.2f})':<18}{hooks:>10}"
        )
    result = {
        "bench": "litellm_routing",
        "mode": args.mode,
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "legs": summary,
        "observations_recorded": recorded,
        "failed_requests": FAILED,
        "source": "measured: CPU time (process_time of the Router's process, /proc of the proxy); in_hooks_ms: "
        "thread CPU time inside wattgate's hooks (about 30 us of it the timing itself)",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
