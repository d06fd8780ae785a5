"""The LiteLLM proxy leg of the gateway benchmarks: start the real LiteLLM proxy in front of one backend.

``with litellm_proxy("http://127.0.0.1:9000", "fake-model") as base_url:`` starts LiteLLM's own proxy
(``litellm --config ...``, pinned to the version in ``bench/litellm-proxy.lock``) as a subprocess on a
free loopback port, routing ``model`` to the OpenAI-compatible ``backend_url``, waits until it serves the
model, yields ``http://127.0.0.1:PORT`` (the OpenAI API is under ``/v1``) and stops it.

The proxy and its ~110 dependencies (boto3, azure, polars, ...) live in their own virtual environment,
``.cache/litellm-proxy/venv``, made by ``scripts/install_litellm_proxy``, so wattgate's own environment
stays lean; ``WATTGATE_LITELLM_BIN`` may name another ``litellm`` executable. Nothing reaches the
network: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else every start fetches the price map from GitHub),
``HF_HUB_OFFLINE=1``, telemetry off, no database. No master key either (the same footing as the
gateway leg, which runs without client keys), so it is for loopback benchmarks only.

For ``bench/gateway_overhead.py``: ``litellm_leg(backend_url)`` is the leg (model ``fake-model``),
``proxy_pid(base_url)`` the process whose CPU time to count, ``litellm_installed()`` whether to offer it;
``LiteLLMProxyError`` (and its subclass ``LiteLLMProxyUnavailable``) is all it raises.

Run as a script for a rough capacity figure of the proxy against a fast fake backend::

    python bench/litellm_leg.py measure [--concurrency 32] [--duration-s 10] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script too: this checkout's wattgate

from wattgate.embedded_redis import free_port  # noqa: E402
from wattgate.procs import stop_process  # noqa: E402

DEFAULT_BIN = REPO / ".cache" / "litellm-proxy" / "venv" / "bin" / "litellm"
FAKE_MODEL = "fake-model"
_RUNNING: dict[str, int] = {}  # base URL -> pid of the proxy serving it
_LOGS: dict[str, Path] = {}  # base URL -> the proxy's log (stdout and stderr), while it runs
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "DISABLE_ADMIN_UI": "True",
    "NO_PROXY": "*",
    # Same footing as the gateway leg (no client keys): LiteLLM refuses to start keyless unless told.
    # It listens on loopback only, for the length of one benchmark.
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}


class LiteLLMProxyError(RuntimeError):
    """The LiteLLM proxy could not be started or did not serve."""


class LiteLLMProxyUnavailable(LiteLLMProxyError):
    """The LiteLLM proxy is not installed (run scripts/install_litellm_proxy)."""


def litellm_installed() -> bool:
    """Whether ``litellm_proxy`` can start (the proxy environment exists)."""
    try:
        litellm_executable()
    except LiteLLMProxyUnavailable:
        return False
    return True


def litellm_executable() -> Path:
    """The ``litellm`` console script of an environment that has the ``proxy`` extra."""
    named = os.environ.get("WATTGATE_LITELLM_BIN")
    path = Path(named) if named else DEFAULT_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        where = f"WATTGATE_LITELLM_BIN={named}" if named else str(path)
        raise LiteLLMProxyUnavailable(
            f"LiteLLM proxy not installed ({where} is missing): run scripts/install_litellm_proxy "
            "(makes .cache/litellm-proxy/venv with litellm[proxy]==1.104.0 from bench/litellm-proxy.lock)"
        )
    interpreter = _shebang(path)
    if interpreter is not None and not interpreter.exists():  # a venv whose Python was removed or moved
        raise LiteLLMProxyUnavailable(
            f"LiteLLM proxy environment broken ({path} runs {interpreter}, which is missing): "
            "rerun scripts/install_litellm_proxy"
        )
    return path


def _shebang(script: Path) -> Path | None:
    """The interpreter named on a script's ``#!`` line (None for a binary or a line without a path)."""
    with script.open("rb") as f:
        first = f.readline(512)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]) if words and words[0].startswith("/") else None


def proxy_config(backend_url: str, model: str) -> str:
    """A LiteLLM config routing ``model`` to an OpenAI-compatible server, with logging and callbacks off."""
    api_base = backend_url.rstrip("/")
    if not api_base.endswith("/v1"):
        api_base += "/v1"
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": api_base, "api_key": "unused"},
            }
        ],
        "litellm_settings": {"set_verbose": False, "telemetry": False, "request_timeout": 600, "num_retries": 0},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def litellm_proxy(
    backend_url: str, model: str, *, startup_timeout_s: float = 180.0
) -> contextlib.AbstractContextManager[str]:
    """Run the LiteLLM proxy in front of ``backend_url`` for ``model``; yield its base URL."""
    return litellm_proxy_with(proxy_config(backend_url, model), model, startup_timeout_s=startup_timeout_s)


def wattgate_in_proxy() -> bool:
    """Whether the proxy environment imports this checkout's wattgate (scripts/install_litellm_proxy puts it
    there), so the proxy can load ``wattgate.litellm_routing.proxy.wattgate_routing`` as a callback."""
    try:
        exe = litellm_executable()
    except LiteLLMProxyUnavailable:
        return False
    code = f"import sys, wattgate.litellm_routing as m; sys.exit(not m.__file__.startswith({str(REPO) + '/'!r}))"
    probe = subprocess.run([str(exe.parent / "python"), "-c", code], cwd="/", capture_output=True, check=False)
    return probe.returncode == 0


@contextlib.contextmanager
def litellm_proxy_with(
    config: str,
    model: str,
    *,
    env: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    startup_timeout_s: float = 180.0,
) -> Iterator[str]:
    """Run the LiteLLM proxy with ``config`` (YAML or JSON text) and ``env`` added to the offline environment,
    ``files`` (name -> text, e.g. a callback module) next to the config; yield its base URL once it serves
    ``model``."""
    exe = litellm_executable()
    with tempfile.TemporaryDirectory(prefix="wattgate-litellm-") as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(config)
        for name, text in (files or {}).items():
            (Path(tmp) / name).write_text(text)
        port = free_port()
        log_path = Path(tmp) / "litellm.log"
        env = {**os.environ, **OFFLINE_ENV, **(env or {})}
        env.pop("LITELLM_MASTER_KEY", None)
        env.pop("DATABASE_URL", None)
        cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        base_url = f"http://127.0.0.1:{port}"
        _RUNNING[base_url], _LOGS[base_url] = proc.pid, log_path
        try:
            _wait_serving(proc, base_url, model, startup_timeout_s, log_path)
            yield base_url
        finally:
            _RUNNING.pop(base_url, None)
            _LOGS.pop(base_url, None)
            stop_process(proc, group=True)


def proxy_pid(base_url: str) -> int | None:
    """The pid of the LiteLLM proxy serving ``base_url`` (one uvicorn worker: all its CPU), while it runs."""
    return _RUNNING.get(base_url)


def proxy_log(base_url: str) -> str:
    """What the proxy serving ``base_url`` has logged so far."""
    path = _LOGS.get(base_url)
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def litellm_leg(backend_url: str) -> contextlib.AbstractContextManager[str]:
    """The leg ``bench/gateway_overhead.py`` expects: ``(backend_url) -> base_url``, model ``fake-model``."""
    return litellm_proxy(backend_url, FAKE_MODEL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_serving(proc: subprocess.Popen[bytes], base_url: str, model: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LiteLLMProxyError(f"LiteLLM proxy exited with {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                r = client.get(f"{base_url}/v1/models")
                if r.status_code == 200 and any(m.get("id") == model for m in r.json().get("data", [])):
                    return
            time.sleep(0.25)
    stop_process(proc, group=True)
    raise LiteLLMProxyError(f"LiteLLM proxy did not serve {model} within {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- rough capacity measurement (script)


def fake_backend_app(chunks: int = 8) -> Starlette:
    """A fast OpenAI-compatible fake: fixed chat completion, streamed as ``chunks`` SSE events."""

    def chunk(i: int, model: str) -> bytes:
        delta = {"content": f"tok{i} "} if i < chunks else {}
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None if i < chunks else "stop"}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def chat(request: Request) -> Response:
        req = json.loads(await request.body())
        model = req.get("model", "fake")
        if req.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for i in range(chunks + 1):
                    yield chunk(i, model)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
        message = {"role": "assistant", "content": " ".join(f"tok{i}" for i in range(chunks))}
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


async def _closed_loop(url: str, model: str, concurrency: int, duration_s: float, stream: bool) -> tuple[int, int]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = failed = 0
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(timeout=30.0, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            nonlocal ok, failed
            while time.monotonic() < deadline:
                try:
                    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_raw():
                            pass
                        ok, failed = (ok + 1, failed) if r.status_code == 200 else (ok, failed + 1)
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


def measure(concurrency: int, duration_s: float, stream: bool) -> dict[str, Any]:
    """Saturation throughput and CPU per request: direct to the fake, then through the LiteLLM proxy."""
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-c", _BACKEND_MAIN, str(port)], cwd=REPO, start_new_session=True, env=os.environ.copy()
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models")
        backend_url = f"http://127.0.0.1:{port}"
        ok, _ = asyncio.run(_closed_loop(backend_url, FAKE_MODEL, concurrency, duration_s, stream))
        direct_rps = ok / duration_s
        with litellm_proxy(backend_url, FAKE_MODEL) as base_url:
            pid = proxy_pid(base_url)
            asyncio.run(_closed_loop(base_url, FAKE_MODEL, 4, 2.0, stream))  # warm-up
            cpu0 = cpu_seconds(pid) if pid else float("nan")
            ok, failed = asyncio.run(_closed_loop(base_url, FAKE_MODEL, concurrency, duration_s, stream))
            cpu1 = cpu_seconds(pid) if pid else float("nan")
    finally:
        stop_process(backend, group=True)
    return {
        "leg": "litellm-proxy",
        "stream": stream,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "direct_rps": round(direct_rps, 1),
        "litellm_rps": round(ok / duration_s, 1),
        "litellm_failed": failed,
        "litellm_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / max(ok, 1), 2),
        "measured": "timers and /proc CPU counters",
    }


_BACKEND_MAIN = """
import sys, uvicorn
sys.path.insert(0, "bench")
from litellm_leg import fake_backend_app
uvicorn.run(fake_backend_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, http="httptools", loop="uvloop")
"""


def _wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    raise LiteLLMProxyError(f"{url} did not answer within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="saturation throughput and CPU per request of the LiteLLM proxy")
    m.add_argument("--concurrency", type=int, default=32)
    m.add_argument("--duration-s", type=float, default=10.0)
    m.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = measure(args.concurrency, args.duration_s, args.stream)
    except LiteLLMProxyError as exc:
        print(f"litellm_leg: {exc}", file=sys.stderr)
        return 1
    print(f"{'leg':<16}{'req/s':>10}{'CPU ms/req':>12}")
    print(f"{'direct':<16}{result['direct_rps']:>10}{'':>12}")
    print(f"{'litellm proxy':<16}{result['litellm_rps']:>10}{result['litellm_cpu_ms_per_request']:>12}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
