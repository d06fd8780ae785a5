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
sends the requests. Legs run in turns over ``--rounds`` rounds (the order rotates); each leg's figure is
its median round. Requests are chat completions with prompts of 40 to 4000 characters and max_tokens of
50, 300 or 1000, so every request type occurs. All figures are measured (CPU counters); nothing is
modelled. Prints a table and one JSON line.

    .venv/bin/python bench/litellm_routing.py [--mode router|proxy] [--requests 300] [--concurrency 8]
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
                pipes[leg].send(args.requests)
                ms, failed = pipes[leg].recv()
                if failed > args.requests // 100:
                    raise RuntimeError(f"{leg}: {failed} of {args.requests} requests failed")
                FAILED[leg] = FAILED.get(leg, 0) + failed
                cpu[leg].append(ms)
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
        routing = WattgateRouting(GatewaySettings(redis_url=redis_url, classifier=classifier))
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
    while n := await asyncio.to_thread(conn.recv):
        work = prompts(n)
        failed = 0
        gc.collect()
        t0 = time.process_time()
        await closed_loop(call, work, concurrency)
        conn.send((1000 * (time.process_time() - t0) / n, failed))
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

        work = prompts(args.requests)
        for base in bases.values():
            await closed_loop(caller(base), work[:20], args.concurrency)
        cpu: dict[str, list[float]] = {leg: [] for leg in LEGS}
        for r in range(args.rounds):
            for leg in LEGS[r % len(LEGS) :] + LEGS[: r % len(LEGS)]:
                pid = proxy_pid(bases[leg])
                assert pid is not None
                c0 = cpu_seconds(pid)
                failures.pop(bases[leg], None)
                await closed_loop(caller(bases[leg]), work, args.concurrency)
                cpu[leg].append(1000 * (cpu_seconds(pid) - c0) / len(work))
                failed = failures.get(bases[leg], 0)
                if failed > args.requests // 100:
                    raise RuntimeError(f"{leg}: {failed} of {args.requests} requests failed")
                FAILED[leg] = FAILED.get(leg, 0) + failed
        return cpu


# ---------------------------------------------------------------- main


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
    parser.add_argument("--requests", type=int, default=300, help="requests per leg and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.mode == "proxy" and not (litellm_installed() and wattgate_in_proxy()):
        print("litellm_routing: the LiteLLM proxy (with wattgate) is not installed: run scripts/install_litellm_proxy")
        return 1
    with fixtures(len(POOLS)) as (urls, redis_url):
        before = observations(redis_url)
        cpu = router_mode(urls, redis_url, args) if args.mode == "router" else proxy_mode(urls, redis_url, args)
        recorded = observations(redis_url) - before
    median = {leg: statistics.median(v) for leg, v in cpu.items()}
    base = median["litellm"]
    print(f"{'leg':<14}{'CPU ms/req':>12}{'x litellm':>11}{'added ms/req':>14}   rounds (ms/req)")
    for leg in LEGS:
        rounds = " ".join(f"{v:.2f}" for v in cpu[leg])
        print(f"{leg:<14}{median[leg]:>12.2f}{median[leg] / base:>11.2f}{median[leg] - base:>14.2f}   {rounds}")
    result = {
        "bench": "litellm_routing",
        "mode": args.mode,
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "cpu_ms_per_request": {leg: round(v, 3) for leg, v in median.items()},
        "ratio_to_litellm": {leg: round(v / base, 3) for leg, v in median.items()},
        "added_cpu_ms_per_request": {leg: round(v - base, 3) for leg, v in median.items() if leg != "litellm"},
        "added_over_noop_callback_ms": {
            leg: round(v - median["litellm+noop"], 3) for leg, v in median.items() if leg.startswith("wattgate")
        },
        "observations_recorded": recorded,
        "failed_requests": FAILED,
        "source": "measured: CPU time (process_time in router mode, /proc of the proxy in proxy mode)",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
