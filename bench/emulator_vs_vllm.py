"""``wattgate sim-backend --tp 8`` against vLLM's measured curve (Llama-3.1-70B, 8xH100): a table and one JSON line.

Starts ``wattgate sim-backend --tp 8`` (defaults otherwise: llama-3.1-70b on the vllm-v1 calibration) as
a subprocess and drives it as vLLM's ``benchmark_serving.py`` drove vLLM for the measured curve
(``../shared/data/profiles/jovan_vllm_benchs/llama70b_h100.csv``): at each rate, 20 s of Poisson
arrivals of 1024-input / 350-output requests (here not streamed, with the ``wattgate_sim`` token
hints). From each response's ``wattgate_sim`` it takes TTFT and TPOT (modelled) and reports their P50
and mean next to the measured figures, with relative errors. Issue 13's target: P50 TTFT and P50
TPOT within 30 % of the measured curve.

The measured file's columns named P50_TTFT / P50_TPOT hold the benchmark's *mean* (its authors' script
parses "Mean TTFT" into them; ``wattgate/servingmodel/measured.py``), so both the modelled P50 and
the modelled mean are compared with that measured mean. Rates measured twice are averaged.
The baseline in the same run is the serving model run offline on the same arrivals
(``servingmodel.experiments.poisson_run``): emulated / offline near 1 says the emulator adds nothing.
``late_p99_s`` is how late (simulated s) the client's requests reached the engine against the
schedule, 99th percentile: large values mean this machine could not keep up; lower ``--speed``.

    PYTHONPATH=$PWD .venv/bin/python bench/emulator_vs_vllm.py [--speed 2] [--rates 2,8,14]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from wattgate.embedded_redis import free_port
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.experiments import poisson_run
from wattgate.servingmodel.measured import read_benchmark

ARCH, TP, PROMPT, OUTPUT = "llama-3.1-70b", 8, 1024, 350
TARGET = 0.30


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def arrivals(rate: float, n: int, seed: int) -> list[float]:
    """The schedule ``poisson_run`` uses for the same seed: exponential gaps from 0."""
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


async def drive(url: str, schedule: list[float], speed: float) -> list[dict[str, Any]]:
    body = {"model": ARCH, "prompt": "x", "max_tokens": OUTPUT}
    body["wattgate_sim"] = {"input_tokens": PROMPT, "output_tokens": OUTPUT}
    timeout = httpx.Timeout(600.0, connect=30.0)
    # no keep-alive: a reused connection races the server's idle timeout under load
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        (await client.get("/v1/models")).raise_for_status()
        loop = asyncio.get_running_loop()
        t0, tasks = loop.time(), []
        for at in schedule:
            await asyncio.sleep(max(0.0, t0 + at / speed - loop.time()))
            tasks.append(asyncio.create_task(client.post("/v1/completions", json=body)))
        responses = await asyncio.gather(*tasks)
    bad = [r.status_code for r in responses if r.status_code != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {bad[:5]}")
    return [r.json()["wattgate_sim"] for r in responses]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sim-backend exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("sim-backend not healthy")


def rel(a: float, b: float) -> float:
    return a / b - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=2.0, help="sim-backend --speed (the client must keep up)")
    ap.add_argument("--rates", default="2,8,14", help="request rates, req/s")
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds of arrivals per rate (vLLM's: 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profiles-dir", default="../shared/data/profiles")
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    measured = read_benchmark(Path(a.profiles_dir), ARCH)
    model = ServingModel(ARCH)
    port = free_port()
    cmd = [sys.executable, "-m", "wattgate", "sim-backend", "--model", ARCH, "--tp", str(TP)]
    cmd += ["--port", str(port), "--speed", f"{a.speed:g}"]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_healthy(url, proc)
        for rate in rates:
            points = [
                p for p in measured if p.rate_rps == rate and (p.input_tokens, p.output_tokens) == (PROMPT, OUTPUT)
            ]
            if not points:
                raise SystemExit(f"no measured point at {rate:g} req/s")
            n = round(rate * a.duration_s)
            schedule = arrivals(rate, n, a.seed)
            cpu0, wall0 = cpu_s(proc.pid), time.monotonic()
            sims = asyncio.run(drive(url, schedule, a.speed))
            cpu1, wall = cpu_s(proc.pid), time.monotonic() - wall0
            ttft = np.array([s["ttft_s"] for s in sims])
            tpot = np.array([s["tbt_mean_s"] for s in sims])
            got = np.array([s["arrival_s"] for s in sims])
            late = (got - got[0]) - (np.array(schedule) - schedule[0])
            off = poisson_run(model.engine(TP), rate, n, PROMPT, OUTPUT, seed=a.seed)
            rows.append(
                {
                    "rate_rps": rate,
                    "requests": n,
                    "ttft_p50_s": float(np.median(ttft)),
                    "ttft_mean_s": float(ttft.mean()),
                    "tpot_p50_s": float(np.median(tpot)),
                    "tpot_mean_s": float(tpot.mean()),
                    "offline_ttft_p50_s": off.ttft_p50_s,
                    "offline_tpot_p50_s": off.tpot_p50_s,
                    "vllm_ttft_mean_s": float(np.mean([p.ttft_mean_s for p in points])),
                    "vllm_tpot_mean_s": float(np.mean([p.tpot_mean_s for p in points])),
                    "late_p99_s": float(np.percentile(late - late.min(), 99)),
                    "wall_s": round(wall, 2),
                    "server_cpu_us_per_token": None
                    if cpu0 is None or cpu1 is None
                    else round((cpu1 - cpu0) * 1e6 / (n * OUTPUT), 2),
                }
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\nsim-backend --tp {TP} --speed {a.speed:g} ({ARCH}, vllm-v1), {PROMPT} in / {OUTPUT} out, Poisson")
    print("latencies in ms; emulated = modelled (wattgate_sim); vLLM = measured mean; err = emulated / vLLM - 1")
    print(
        f"{'req/s':>5} {'TTFT p50':>8} {'mean':>6} {'vLLM':>6} {'err p50':>7} {'err mean':>8} | "
        f"{'TPOT p50':>8} {'mean':>6} {'vLLM':>6} {'err p50':>7} {'err mean':>8} | "
        f"{'emu/offline p50':>15} {'late p99 s':>10} {'cpu us/tok':>10}"
    )
    met = True
    for r in rows:
        r["err_ttft_p50"] = rel(r["ttft_p50_s"], r["vllm_ttft_mean_s"])
        r["err_ttft_mean"] = rel(r["ttft_mean_s"], r["vllm_ttft_mean_s"])
        r["err_tpot_p50"] = rel(r["tpot_p50_s"], r["vllm_tpot_mean_s"])
        r["err_tpot_mean"] = rel(r["tpot_mean_s"], r["vllm_tpot_mean_s"])
        met = met and abs(r["err_ttft_p50"]) <= TARGET and abs(r["err_tpot_p50"]) <= TARGET
        ratio = f"{r['ttft_p50_s'] / r['offline_ttft_p50_s']:.3f}/{r['tpot_p50_s'] / r['offline_tpot_p50_s']:.3f}"
        print(
            f"{r['rate_rps']:>5g} {r['ttft_p50_s'] * 1e3:>8.1f} {r['ttft_mean_s'] * 1e3:>6.1f} "
            f"{r['vllm_ttft_mean_s'] * 1e3:>6.1f} {r['err_ttft_p50']:>+7.1%} {r['err_ttft_mean']:>+8.1%} | "
            f"{r['tpot_p50_s'] * 1e3:>8.2f} {r['tpot_mean_s'] * 1e3:>6.2f} {r['vllm_tpot_mean_s'] * 1e3:>6.2f} "
            f"{r['err_tpot_p50']:>+7.1%} {r['err_tpot_mean']:>+8.1%} | {ratio:>15} {r['late_p99_s']:>10.3f} "
            f"{r['server_cpu_us_per_token'] or float('nan'):>10.1f}"
        )
    verdict = "met" if met else "NOT met"
    print(f"issue 13 target (P50 TTFT and P50 TPOT within {TARGET:.0%} of the measured curve): {verdict}")
    print(
        json.dumps(
            {
                "bench": "emulator_vs_vllm",
                "speed": a.speed,
                "target_rel": TARGET,
                "target_met": met,
                "rows": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                "figures": "emulated and offline: modelled; vLLM: measured means (the CSV's P50_* columns); "
                "wall and CPU: measured",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
