"""What the gateway adds: direct to a fast fake backend vs through wattgate (vs other legs), same run.

Each leg is "a base URL to hit". The backend, each proxy and the load generator are separate
processes (the load generator must not steal the gateway's CPU). Measured: added p50/p99 latency
at fixed rates (open loop), saturation throughput (closed loop), streaming and not, and the
gateway's CPU time per request (from /proc, over the fixed-rate runs). Prints a table and one
JSON line. All figures are measured (timers, /proc CPU counters); nothing is modelled.

    .venv/bin/python bench/gateway_overhead.py [--rate 100] [--duration-s 10] [--legs direct,wattgate]

Add a leg: write a context manager ``(backend_url) -> base_url`` and put it in ``LEGS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import wait_port  # noqa: E402
from wattgate.embedded_redis import free_port  # noqa: E402
from wattgate.procs import stop_process  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def process(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, timeout_s=60)
        yield proc
    finally:
        stop_process(proc, timeout_s=10)


@contextlib.contextmanager
def fake_backend() -> Iterator[str]:
    port = free_port()
    cmd = [
        PY,
        "-m",
        "uvicorn",
        "--app-dir",
        str(ROOT / "bench"),
        "_fake_server:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    with process(cmd, port):
        yield f"http://127.0.0.1:{port}"


CPU_PIDS: dict[str, int] = {}  # leg -> pid whose CPU time is reported


@contextlib.contextmanager
def direct(backend: str) -> Iterator[str]:
    yield backend


def gateway_leg(name: str, *extra: str) -> Callable[[str], AbstractContextManager[str]]:
    """``wattgate gateway`` as a user runs it, with ``extra`` flags; its CPU is reported under ``name``."""

    @contextlib.contextmanager
    def leg(backend: str) -> Iterator[str]:
        port = free_port()
        cmd = [PY, "-m", "wattgate", "gateway", "--backend", f"{backend}#model=fake-model", "--port", str(port)]
        with process([*cmd, "--log-level", "warning", *extra], port) as proc:
            CPU_PIDS[name] = proc.pid
            yield f"http://127.0.0.1:{port}"

    return leg


LEGS: dict[str, Callable[[str], AbstractContextManager[str]]] = {
    "direct": direct,
    "wattgate": gateway_leg("wattgate"),  # routes with the shipped trained classifier (the default)
    "wattgate-mt": gateway_leg("wattgate-mt", "--classifier", "max_tokens"),  # the max_tokens-only fallback
}
with contextlib.suppress(ImportError):  # the LiteLLM proxy leg, when its environment is installed
    from bench.litellm_leg import litellm_installed, litellm_leg, proxy_pid  # type: ignore[import-not-found]

    @contextlib.contextmanager
    def litellm_with_cpu(backend: str) -> Iterator[str]:
        with litellm_leg(backend) as url:
            pid = proxy_pid(url)
            if pid is not None:
                CPU_PIDS["litellm"] = pid
            yield url

    if litellm_installed():
        LEGS["litellm"] = litellm_with_cpu


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadgen(url: str, stream: bool, **kw: Any) -> dict[str, Any]:
    args = [PY, str(ROOT / "bench" / "loadgen.py"), url] + (["--stream"] if stream else [])
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(args, env=ENV, capture_output=True, check=True, timeout=600)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 10 else float("nan")


def run_leg(name: str, url: str, a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        pid = CPU_PIDS.get(name)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        fixed = loadgen(url, stream, rate=a.rate, duration_s=a.duration_s, max_tokens=a.max_tokens)
        cpu = (cpu_seconds(pid) - cpu0) / max(1, fixed["n"] + 20) if pid else None
        sat = loadgen(url, stream, concurrency=a.concurrency, duration_s=a.sat_duration_s, max_tokens=a.max_tokens)
        key = "ttfb_s" if stream else "total_s"
        out[mode] = {
            "p50_ms": 1e3 * pct(fixed[key], 0.5),
            "p99_ms": 1e3 * pct(fixed[key], 0.99),
            "total_p50_ms": 1e3 * pct(fixed["total_s"], 0.5),
            "errors": fixed["errors"] + fixed["bad_status"] + sat["errors"],
            "sat_rps": sat["rps"],
            "cpu_ms_per_req": None if cpu is None else 1e3 * cpu,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="fixed request rate, req/s (default 100)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds at the fixed rate per leg and mode")
    p.add_argument("--sat-duration-s", type=float, default=5.0, help="seconds of closed-loop saturation")
    p.add_argument("--concurrency", type=int, default=32, help="connections for the saturation run")
    p.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated, from {', '.join(LEGS)}")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=8,
        help="max_tokens of each request (default 8: only short answers fit, so the classifier skips its trees); "
        "0 leaves it out and the classifier runs in full",
    )
    a = p.parse_args()
    results: dict[str, Any] = {}
    with fake_backend() as backend:
        for name in a.legs.split(","):
            with LEGS[name](backend) as url:
                results[name] = run_leg(name, url, a)
    report(results, a)


def report(results: dict[str, Any], a: argparse.Namespace) -> None:
    base = results.get("direct")
    print(
        f"gateway overhead, fake backend, {a.rate:.0f} req/s for {a.duration_s:.0f} s, "
        f"saturation with {a.concurrency} connections; max_tokens {a.max_tokens or 'absent'}; "
        f"{os.cpu_count()} CPUs (measured)"
    )
    print(
        f"{'leg':<13}{'mode':<8}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'sat req/s':>11}{'CPU ms/req':>12}{'errors':>8}"
    )
    summary: dict[str, Any] = {
        "bench": "gateway_overhead",
        "rate_rps": a.rate,
        "max_tokens": a.max_tokens or None,
        "cpus": os.cpu_count(),
        "source": "measured",
        "legs": results,
    }
    for name, modes in results.items():
        for mode, r in modes.items():
            if base:
                r["added_p50_ms"] = r["p50_ms"] - base[mode]["p50_ms"]
                r["added_p99_ms"] = r["p99_ms"] - base[mode]["p99_ms"]
                r["sat_ratio_vs_direct"] = r["sat_rps"] / base[mode]["sat_rps"]
            cpu = "-" if r["cpu_ms_per_req"] is None else f"{r['cpu_ms_per_req']:.2f}"
            print(
                f"{name:<13}{mode:<8}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r.get('added_p50_ms', 0):>9.2f}"
                f"{r.get('added_p99_ms', 0):>9.2f}{r['sat_rps']:>11.0f}{cpu:>12}{r['errors']:>8}"
            )
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
