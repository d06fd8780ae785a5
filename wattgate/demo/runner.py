"""Run the demo: start the cluster, replay the trace with a live view, report, and always shut down cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from wattgate.demo.cluster import MODEL, Cluster, ClusterSettings, DemoError
from wattgate.demo.replay import LoopLag, Progress, Result, replay
from wattgate.demo.report import baseline, build_report, fleet_baseline, render, write_json, write_requests_csv
from wattgate.demo.store import prime_load_history
from wattgate.demo.trace import Scheduled, TraceError, read_trace, schedule
from wattgate.demo.view import View
from wattgate.listen import port_free
from wattgate.planner.baselines import single_pool_tp
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import ClassEdges, SloTargets


@dataclass(frozen=True)
class DemoSettings:
    duration_s: float
    speed: float
    nodes: tuple[tuple[str, int], ...]  # (name, simulated GPUs)
    port: int
    trace: Path | None
    keep_running: bool
    max_output_tokens: int | None
    report_json: Path | None
    run_dir: Path | None
    seed: int
    load_fraction: float
    external: bool = False

    @property
    def gpus(self) -> int:
        return sum(g for _, g in self.nodes)

    @classmethod
    def from_values(cls, v: Any, nodes: tuple[tuple[str, int], ...]) -> DemoSettings:
        return cls(
            v.duration_s,
            v.speed,
            nodes,
            v.port,
            Path(v.trace[0]) if v.trace else None,
            v.keep_running,
            v.max_output_tokens,
            v.report_json,
            v.run_dir,
            v.seed,
            v.load_fraction,
            v.external,
        )


def say(message: str, err: bool = False) -> None:
    out = sys.stderr if err else sys.stdout
    out.write(message + "\n")
    out.flush()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def preflight(s: DemoSettings) -> tuple[list[Scheduled], Path] | tuple[int, str]:
    """What is checked before anything starts: the trace, the gateway's port, the run directory; else the exit
    status (2: bad input, 1: cannot start) and why."""
    try:
        sched = schedule(
            read_trace(s.trace),
            s.duration_s,
            s.speed,
            ClassEdges(),
            max_output_tokens=s.max_output_tokens,
            seed=s.seed,
            load_fraction=s.load_fraction,
        )
    except TraceError as exc:
        return 2, str(exc)
    if not sched:
        return 2, "no request falls in the replayed span; raise --duration-s"
    busy = port_free("127.0.0.1", s.port)  # a taken port is one line now, not a gateway that hangs later
    if busy is not None:
        return 1, f"{busy} (the gateway's port: free it or give another with --port)"
    try:
        run_dir = s.run_dir or Path(tempfile.mkdtemp(prefix="wattgate-demo-"))
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return 1, f"cannot make the run directory: {exc}"
    return sched, run_dir


def main(s: DemoSettings) -> int:
    ready = preflight(s)
    if isinstance(ready[0], int):
        say(f"wattgate demo: error: {ready[1]}", err=True)
        return ready[0]
    sched, run_dir = ready
    cluster = Cluster(ClusterSettings(s.nodes, s.port, run_dir, external=s.external))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops the demo like Ctrl-C
    code = 0
    try:
        tps = cluster.settings.engine_tps() if s.external else []
        engines = f"{len(tps)} external TP{'/'.join(map(str, sorted(set(tps))))} engines, " if tps else ""
        say(
            f"starting: Redis, {engines}planner, {len(s.nodes)} agent(s) with "
            f"{'/'.join(str(g) for _, g in s.nodes)} simulated GPUs, gateway"
            f" (logs: {run_dir})"
        )
        cluster.start(prime=lambda url: prime_load_history(url, pool_rates(sched, s.duration_s)))
        cluster.wait_ready()
        say(f"gateway ready: {cluster.url}/v1 (any OpenAI client, model {MODEL!r}); dashboard {cluster.url}/dashboard")
        say(f"replaying {len(sched)} requests ({s.duration_s * s.speed:.0f} s of trace in {s.duration_s:.0f} s)")
        rep = asyncio.run(_drive(cluster, sched, s))
        say(render(rep))
        say(f"every request: {run_dir / 'requests.csv'}; plans: {run_dir / 'planner.log'}")
        code = 0 if rep["requests"]["failed"] == 0 else 1
        if s.report_json:
            try:
                write_json(rep, s.report_json)
            except OSError as exc:
                say(f"wattgate demo: error: cannot write --report-json: {exc}", err=True)
                code = 1
        if s.keep_running:
            say(f"\ngateway still serving at {cluster.url}/v1 — Ctrl-C to stop")
            while True:
                cluster.check_alive()
                time.sleep(1.0)
    except KeyboardInterrupt:
        say("\nstopping…")
        code = 130 if not s.keep_running else code
    except DemoError as exc:
        say(f"wattgate demo: {exc}", err=True)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        problems = cluster.stop()
        locked = cluster.locked_clocks()
        signal.signal(signal.SIGTERM, previous)
        for p in problems:
            say(f"warning: {p}", err=True)
        if locked:
            say(f"warning: clocks still locked on {', '.join(locked)}", err=True)
        else:
            say("all processes stopped; GPU clocks reset")
    return code


def pool_rates(sched: list[Scheduled], duration_s: float) -> dict[str, float]:
    """Mean requests/s of each pool over the replay (its true request type)."""
    counts = Counter(r.rtype.name for r in sched)
    return {pool: n / duration_s for pool, n in counts.items()}


def _energy(d: dict[str, Any]) -> tuple[float, float]:
    nodes = d.get("nodes") or []
    return sum(n["energy_j"] for n in nodes), max((n["ts"] for n in nodes), default=time.time())


async def _snapshot(cluster: Cluster) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(cluster.data)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


async def _drive(cluster: Cluster, sched: list[Scheduled], s: DemoSettings) -> dict[str, Any]:
    view = View()
    progress = Progress(total=len(sched))
    lag = LoopLag()
    start_d = await _snapshot(cluster)
    e0, t0 = _energy(start_d)
    started = time.monotonic()

    def on_result(r: Result) -> None:
        pass

    task = asyncio.create_task(replay(cluster.url, MODEL, sched, progress, on_result, lag=lag))
    while not task.done():
        cluster.check_alive()
        d = await _snapshot(cluster)
        view.update(d, progress, time.monotonic() - started, s.duration_s, cluster.url)
        await asyncio.wait({task}, timeout=1.0)
    await task
    await asyncio.sleep(2.0)  # one more telemetry period, so the counters cover the last requests
    end_d = await _snapshot(cluster)
    e1, t1 = _energy(end_d)
    elapsed = max(1.0, t1 - t0)
    if s.external:
        base = fleet_baseline(load_builtin(), sched, elapsed, SloTargets(), cluster.settings.engine_tps())
    else:
        tp = single_pool_tp(load_builtin(), [g for _, g in s.nodes])
        base = baseline(load_builtin(), sched, elapsed, SloTargets(), s.gpus, tp=tp)
    write_requests_csv(progress.results, cluster.settings.run_dir / "requests.csv")
    return build_report(
        progress.results,
        scheduled=len(sched),
        energy_j=e1 - e0,
        base=base,
        elapsed_s=elapsed,
        client_lag=lag.summary(),
    )
