"""Start and stop the demo's processes: a private Redis, a planner, one agent per node and the gateway; with
``external``, first the emulated engines themselves, which the agents then only register (``--external``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from wattgate.embedded_redis import EmbeddedRedis, EmbeddedRedisError, free_port
from wattgate.profiles.builtin import DEFAULT_PROFILE
from wattgate.profiles.classes import LengthClass, SloTargets

MODEL = "llama-3.1-70b"
# agents drain in-flight streams before stopping an engine (the longest trace output, 1,000 tokens at ~60 ms,
# lasts about a minute), and on SIGTERM they drain, stop engines and reset clocks
STOP_TIMEOUT_S = 120.0


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a process log, indented (what the demo prints when a process dies)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"  (cannot read it: {exc})"
    return "\n".join("  " + line for line in text.rstrip().splitlines()[-lines:]) or "  (empty)"


class DemoError(Exception):
    """A demo process did not start, died, or the cluster never became ready."""


@dataclass(frozen=True)
class ClusterSettings:
    nodes: tuple[tuple[str, int], ...]  # (name, simulated GPUs)
    port: int
    run_dir: Path
    pool_period_s: float = 30.0
    cluster_period_s: float = 60.0
    ready_timeout_s: float = 120.0
    # agents pick clocks for TTFT targets this much under the report's: the gateway and the client add time
    slo_margin_s: float = 0.05
    clock_window_s: int = 30  # the agents' clock loop averages this many seconds of live load
    # the engines are started up front, as a user's own servers would run, and the agents register them as
    # external servers: the planner gives them pools and clocks only
    external: bool = False

    def engine_tp(self, node: str) -> int:
        """TP of ``node``'s external engines: TP4 on nodes of 4 GPUs or more (the demo's managed plan runs TP4)."""
        return min(4, dict(self.nodes)[node])

    def engines(self, node: str) -> list[tuple[str, tuple[int, ...]]]:
        """The external engines of ``node``: id and GPU indices."""
        tp = self.engine_tp(node)
        return [(f"{node}-e{k}", tuple(range(k * tp, (k + 1) * tp))) for k in range(dict(self.nodes)[node] // tp)]

    def engine_tps(self) -> list[int]:
        """The TP of every external engine of the cluster (its fleet)."""
        return [self.engine_tp(node) for node, _ in self.nodes for _ in self.engines(node)]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class Cluster:
    """The running processes; ``stop()`` ends them in order (agents reset clocks and stop engines)."""

    settings: ClusterSettings
    redis: EmbeddedRedis | None = None
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def start(self, prime: Callable[[str], None] | None = None) -> None:
        """Start Redis, call ``prime(redis_url)`` (load history), then the gateway, planner and agents."""
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.redis = EmbeddedRedis().start()
        except EmbeddedRedisError as exc:
            raise DemoError(f"cannot start the private Redis: {exc}") from exc
        r = self.redis.url
        urls = self._start_engines() if s.external else {}
        if prime is not None:
            prime(r)
        self._spawn("gateway", ["gateway", "--redis-url", r, "--port", str(s.port), "--log-level", "warning"])
        planner = ["planner", "--redis-url", r, "--pool-period-s", str(s.pool_period_s)]
        planner += ["--cluster-period-s", str(s.cluster_period_s)]
        planner += ["--gpus-per-node", str(max(gpus for _, gpus in s.nodes))]
        if not s.external:  # the cluster is known: the first plan uses it all, before any heartbeat
            planner += ["--nodes", ",".join(f"{node}={gpus}" for node, gpus in s.nodes)]
        self._spawn("planner", planner)
        slo = SloTargets()
        ttft = ",".join(
            f"{slo.ttft_p99_s[c] - s.slo_margin_s:g}" for c in (LengthClass.S, LengthClass.M, LengthClass.L)
        )
        for node, gpus in s.nodes:
            args = ["agent", "--redis-url", r, "--node", node, "--gpu-kind", f"simulated:{gpus}"]
            if s.external:  # the engines run already: the agent registers them, locks clocks, never stops them
                for eid, indices in s.engines(node):
                    spec = f"id={eid},url={urls[eid]},gpus={':'.join(map(str, indices))},engine=sim"
                    args += ["--external", spec]
                args += ["--profile", DEFAULT_PROFILE]  # the clock loop: simulated engines follow the shipped profile
            else:
                args += ["--engine", "simulated", "--port-base", str(free_port())]
            args += ["--model", MODEL, "--state-dir", str(s.run_dir / node)]
            args += ["--gpu-state-dir", str(self.gpu_dir(node))]
            args += ["--ttft-s", ttft, "--tbt-s", f"{slo.tbt_p99_s:g}", "--load-window-s", str(s.clock_window_s)]
            args += [
                "--start-timeout-s",
                "60",
                "--drain-timeout-s",
                "90",
                "--stop-grace-s",
                "5",
                "--log-level",
                "warning",
            ]
            self._spawn(f"agent-{node}", args)

    def _start_engines(self) -> dict[str, str]:
        """The external engines, one ``wattgate sim-backend`` each, on their node's simulated GPUs; their URLs
        once every one answers."""
        s, urls = self.settings, {}
        for node, _ in s.nodes:
            for eid, gpus in s.engines(node):
                port = free_port()
                urls[eid] = f"http://127.0.0.1:{port}"
                args = ["sim-backend", "--model", MODEL, "--tp", str(s.engine_tp(node)), "--port", str(port)]
                args += ["--gpus", ",".join(map(str, gpus)), "--gpu-state-dir", str(self.gpu_dir(node))]
                self._spawn(f"engine-{eid}", args)
        deadline = time.monotonic() + s.ready_timeout_s
        for eid, url in urls.items():
            while not _answers(url + "/health"):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(f"engine {eid} did not answer at {url} (logs in {s.run_dir})")
                time.sleep(0.2)
        return urls

    def gpu_dir(self, node: str) -> Path:
        return self.settings.run_dir / node / "sim-gpus"

    def locked_clocks(self) -> list[str]:
        """Simulated GPUs whose clock is still locked (empty after a clean stop: the agents reset them)."""
        locked = []
        for node, _ in self.settings.nodes:
            for f in sorted(self.gpu_dir(node).glob("gpu*.control.json")):
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(f.read_text()).get("locked_sm_clock_mhz") is not None:
                        locked.append(f"{node}/{f.name.split('.')[0]}")
        return locked

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.settings.run_dir / f"{name}.log").open("wb")
        # the demo sets its processes' options by flags alone: a WATTGATE_* variable meant for another
        # deployment (client keys, a Redis URL, ...) must not change them
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATTGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        # own session: a Ctrl-C in the terminal reaches only the demo, which then stops these in order
        popen = subprocess.Popen(
            [sys.executable, "-m", "wattgate", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.procs.append(Proc(name, popen, log))

    def check_alive(self) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                log = self.settings.run_dir / f"{p.name}.log"
                raise DemoError(f"{p.name} exited with code {code}; the last lines of {log}:\n{log_tail(log)}")

    def data(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The gateway's dashboard snapshot (the same JSON the page polls)."""
        with urllib.request.urlopen(f"{self.url}/dashboard/data", timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def wait_ready(self, on_wait: Any = None) -> dict[str, Any]:
        """Until the gateway answers, a plan is out and every planned instance is ready."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                d = self.data()
            except (urllib.error.URLError, OSError, ValueError):
                d = {}
            inst = d.get("instances") or []
            plan = d.get("plan")
            engines = len(self.settings.engine_tps()) if self.settings.external else 0
            if (
                plan
                and inst
                and all(i["state"] == "ready" for i in inst)
                and len(d.get("nodes") or []) == len(self.settings.nodes)
                and plan.get("fixed", 0) == engines  # external engines: once the plan gives every one a pool
                and all(i["pool"] for i in inst)
            ):
                return d
            if on_wait is not None:
                on_wait(d)
            time.sleep(0.5)
        raise DemoError(
            f"the cluster was not ready after {self.settings.ready_timeout_s:.0f} s (logs in {self.settings.run_dir})"
        )

    def stop(self) -> list[str]:
        """SIGTERM the planner, then the agents (they drain, stop engines, reset clocks), then the gateway, then
        the external engines (the agents never stop those)."""
        problems: list[str] = []
        groups = [
            [p for p in self.procs if p.name == "planner"],
            [p for p in self.procs if p.name.startswith("agent")],
            [p for p in self.procs if p.name == "gateway"],
            [p for p in self.procs if p.name.startswith("engine-")],
        ]
        for group in groups:
            for p in group:
                if p.popen.poll() is None:
                    p.popen.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.popen.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(p.popen.pid, signal.SIGKILL)
                    p.popen.wait()
                    problems.append(f"{p.name} did not stop within {STOP_TIMEOUT_S:.0f} s and was killed")
                p.log.close()
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        return problems


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 (loopback)
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
