"""Runs ``wattgate profile``: sim-backend instances on simulated GPUs (``--sim``), or a real engine's GPUs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from wattgate.agent.gpu.base import Gpu, GpuError
from wattgate.agent.gpu.simulated import open_simulated_gpus
from wattgate.agent.profiler import ProfilerError, SweepPlan, build_profile, sweep
from wattgate.agent.simcli import number_list
from wattgate.embedded_redis import free_port
from wattgate.procs import stop_process
from wattgate.profiles.classes import ProfilesError, RequestType
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.errors import ServingModelError


def _numbers(text: str, what: str, kind: type[Any]) -> tuple[Any, ...]:
    try:
        return number_list(text, what, kind)
    except ValueError as exc:
        raise ProfilerError(str(exc)) from None


def _plan(args: Any, tp: int, timing: str) -> SweepPlan:
    try:
        types = tuple(RequestType.parse(t) for t in args.types.split(",") if t.strip())
    except ProfilesError as exc:
        raise ProfilerError(str(exc)) from exc
    return SweepPlan(
        tp=tp,
        clocks_mhz=_numbers(args.clocks, "--clocks", int),
        loads_rps=_numbers(args.loads, "--loads", float),
        types=types,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
        speed=args.speed,
        timing=timing,
        arrivals=args.arrivals,
        seed=args.seed,
    )


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ProfilerError(f"sim-backend exited with {proc.returncode}: {err.strip()[-500:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise ProfilerError(f"sim-backend at {url} not healthy after {timeout_s:g} s")


@contextlib.contextmanager
def sim_backend(args: Any, tp: int, state_dir: str, model: str) -> Iterator[str]:
    """A ``wattgate sim-backend`` subprocess on GPUs 0..tp-1 of ``state_dir``; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "wattgate", "sim-backend", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", model, "--tp", str(tp), "--gpus", ",".join(map(str, range(tp)))]
    cmd += ["--gpu-state-dir", state_dir, "--speed", str(args.speed), "--load-window-s", str(max(args.warmup_s, 1.0))]
    cmd += ["--arch", args.arch, "--engine", args.engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        yield url
    finally:
        stop_process(proc, timeout_s=10)
        if proc.stderr:
            proc.stderr.close()


def _real_gpus(args: Any, tp: int, stack: contextlib.ExitStack) -> Sequence[Gpu]:
    """The instance's GPUs: NVML (``wattgate.agent.gpu.nvml.NvmlLibrary``, shut down with ``stack``) or simulated."""
    indices = _numbers(args.gpus, "--gpus", int) if args.gpus else tuple(range(tp))
    if args.gpu_kind == "simulated":
        return open_simulated_gpus(indices, args.gpu_state_dir)
    try:
        nvml = importlib.import_module("wattgate.agent.gpu.nvml")
        lib = stack.enter_context(nvml.NvmlLibrary())
        gpus: Sequence[Gpu] = lib.gpus(list(indices))
    except ImportError as exc:
        raise ProfilerError("the NVML GPU seam (wattgate.agent.gpu.nvml) is not in this build") from exc
    except GpuError as exc:
        raise ProfilerError(f"cannot open GPUs {list(indices)} through NVML: {exc}") from exc
    return gpus


def _served_model(url: str) -> str:
    try:
        data = httpx.get(f"{url}/v1/models", timeout=10.0).json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ProfilerError(f"cannot read the served model from {url}/v1/models: {exc}") from exc


def run(args: Any) -> int:
    tps = _numbers(args.tps, "--tps", int)
    rows: list[list[Any]] = []
    provenance: dict[str, Any] = {
        "source": "wattgate profile",
        "measured_at_unix_s": int(time.time()),
        "clocks_mhz": args.clocks,
        "loads_rps": args.loads,
        "types": args.types,
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "arrivals": args.arrivals,
        "latency": "P99 over requests of TTFT and of each request's mean time between tokens",
    }
    if args.sim:
        try:
            serving = ServingModel(args.arch, args.engine)
        except ServingModelError as exc:
            raise ProfilerError(str(exc)) from exc
        timing = args.timing or "engine"
        model, gpu_name = args.model or args.arch, f"{serving.calibration.gpu} (simulated)"
        provenance |= {"engine": f"wattgate sim-backend: the serving model, {args.arch} on {args.engine}"}
        provenance |= {"speed": args.speed, "power": "modelled (simulated GPU energy counters)"}
        with tempfile.TemporaryDirectory(prefix="wattgate-profile-") as state_dir:
            for tp in tps:
                plan = _plan(args, tp, timing)
                sim_gpus = open_simulated_gpus(range(tp), state_dir)
                with sim_backend(args, tp, state_dir, model) as url:
                    rows += asyncio.run(sweep(url, model, sim_gpus, plan))
    else:
        if not args.url or len(tps) != 1:
            raise ProfilerError("without --sim, give --url of the engine and exactly one --tps (its TP)")
        timing = args.timing or "client"
        plan = _plan(args, tps[0], timing)
        with contextlib.ExitStack() as stack:
            gpus = _real_gpus(args, tps[0], stack)
            model = args.model or _served_model(args.url)
            gpu_name = gpus[0].name if gpus else "unknown"
            kind = "measured (NVML energy counters)" if gpus and gpus[0].source == "measured" else "modelled"
            provenance |= {"engine": args.url, "power": kind}
            rows = asyncio.run(sweep(args.url, model, gpus, plan))
    provenance["timing"] = (
        "engine-reported modelled timings (simulated seconds)" if timing == "engine" else "client timers (measured)"
    )
    try:
        profile = build_profile(model, gpu_name, rows, provenance)
        Path(args.out).write_text(json.dumps(profile.to_document(), indent=1) + "\n", encoding="utf-8")
    except (ProfilesError, OSError) as exc:
        raise ProfilerError(f"cannot write {args.out}: {exc}") from exc
    _print_rows(rows, timing)
    return 0


def _print_rows(rows: list[list[Any]], timing: str) -> None:
    src = "modelled" if timing == "engine" else "measured"
    sys.stdout.write(f"tp  clock type  load  ttft_p99_s({src}) tbt_p99_s({src}) power_w\n")
    for tp, clock, rtype, load, ttft, tbt, power in rows:
        sys.stdout.write(f"{tp:<3} {clock:<5} {rtype:<4} {load:<5g} {ttft:<17.4f} {tbt:<16.4f} {power:.1f}\n")
