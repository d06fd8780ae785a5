"""The fault matrix: for each fault, ordinary requests sent while it happens, how many failed and how, what
the fault's own requests got, and whether the gateway kept serving. A table and one JSON line.

Real processes on loopback: fake OpenAI backends (uvicorn), ``wattgate gateway``, and for the cluster
faults Redis, ``wattgate planner`` and ``wattgate agent`` (simulated GPUs and engines). Ordinary clients
(threads, streamed and plain requests alternately) run through every fault; the first row, with no
fault, is the baseline of the same run. Deadlines are shortened so a run takes minutes (the flags are
printed); all counts are measured.

    PYTHONPATH=$PWD .venv/bin/python bench/faults.py [--window-s 6] [--workers 4]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support import wait_for, wait_port  # noqa: E402
from wattgate.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from wattgate.procs import stop_process  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
GATEWAY_FLAGS = [  # deadlines shortened to fit a run; the defaults are 60 s (nginx-like)
    "--first-byte-timeout-s", "3", "--request-timeout-s", "6", "--client-header-timeout-s", "3",
    "--client-body-timeout-s", "3", "--health-interval-s", "1", "--classifier", "max_tokens", "--log-level", "warning",
]  # fmt: skip
LIMITED = (  # ``python -m wattgate`` under a 1,024 open-file limit (soft and hard)
    "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
    "from wattgate.cli import main; sys.exit(main(sys.argv[1:]))"
)
POISON = "poison pill"


class Proc:
    """A child process in its own session, logging to a file; ``restart`` runs the same command again."""

    def __init__(self, name: str, cmd: list[str], logs: Path, port: int | None = None) -> None:
        self.name, self.cmd, self.logs, self.port = name, cmd, logs, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart()

    def restart(self) -> None:
        with (self.logs / f"{self.name}.log").open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.port is not None:
            wait_port(self.port, timeout_s=60)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig is signal.SIGKILL:
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            stop_process(self.proc, timeout_s=15, group=True)


def backend(name: str, logs: Path) -> Proc:
    port = free_port()
    cmd = [PY, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "_fault_backend:app", "--port", str(port)]
    return Proc(name, [*cmd, "--log-level", "critical", "--no-access-log"], logs, port)


def gateway(name: str, logs: Path, args: list[str], limited: bool = False) -> tuple[str, Proc]:
    port = free_port()
    head = [PY, "-c", LIMITED] if limited else [PY, "-m", "wattgate"]
    proc = Proc(name, [*head, "gateway", "--port", str(port), *GATEWAY_FLAGS, *args], logs, port)
    return f"http://127.0.0.1:{port}", proc


def ask(client: httpx.Client, gw: str, model: str, stream: bool, content: str = "hi") -> str:
    """One request; "ok" or how it failed."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "stream": stream}
    try:
        if not stream:
            r = client.post(gw + "/v1/chat/completions", json=body)
            return "ok" if r.status_code == 200 else f"HTTP {r.status_code} {_code(r.content)}"
        with client.stream("POST", gw + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return f"HTTP {r.status_code} {_code(r.read())}"
            lines = list(r.iter_lines())
        errors = [line for line in lines if line.startswith("data: {") and '"error"' in line]
        if errors:
            return f"stream ended by error event {_code(errors[0][6:].encode())}"
        return "ok" if "data: [DONE]" in lines else "stream cut without [DONE]"
    except httpx.TimeoutException:
        return "client timeout (30 s)"
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(not an OpenAI error body)"


class Load:
    """Ordinary clients: ``workers`` threads, each sending one request after another (streamed and plain
    alternately) until stopped; every outcome is kept."""

    def __init__(self, gw: str, model: str, workers: int) -> None:
        self.gw, self.model = gw, model
        self.outcomes: list[str] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(workers)]

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=30) as client:
            stream = bool(n % 2)
            while not self.stopped.is_set():
                self.outcomes.append(ask(client, self.gw, self.model, stream))
                stream = not stream
                self.stopped.wait(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=40)


def kept_serving(gw: str, proc: Proc, model: str) -> bool:
    if not proc.alive():
        return False
    with httpx.Client(timeout=30) as client:
        health = client.get(gw + "/health").status_code == 200
        return health and ask(client, gw, model, False) == "ok" and ask(client, gw, model, True) == "ok"


def metric(gw: str, name: str, **labels: str) -> float:
    """The sum of the gateway's samples of ``name`` with (at least) these label values."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in httpx.get(gw + "/metrics", timeout=10).text.splitlines():
        if line.split("{")[0].split(" ")[0] == name and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mb(proc: Proc) -> float:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_exchange(gw: str, data: bytes, wait_s: float = 0.0, timeout_s: float = 30.0) -> bytes:
    """Send ``data`` on a fresh connection (``wait_s`` later, read) and return everything until close."""
    host, port = gw.removeprefix("http://").split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        time.sleep(wait_s)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def status_of(answer: bytes) -> str:
    if not answer.startswith(b"HTTP/1.1 "):
        return "closed, no answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    return f"{int(head.split()[1])} {_code(body) if b'content-length' in head.lower() else ''}".strip()


def summary(outcomes: list[str]) -> str:
    counts = collections.Counter(outcomes)
    return "; ".join(f"{n} × {k}" for k, n in counts.most_common()) or "-"


Fault = Callable[[], tuple[str, str]]  # runs the fault: (what its own requests got, a note)


def run(name: str, gw: str, gw_proc: Proc, model: str, fault: Fault, a: argparse.Namespace) -> dict[str, Any]:
    with Load(gw, model, a.workers) as load:
        time.sleep(1.0)
        got, note = fault()
        time.sleep(a.window_s)
    failed = [o for o in load.outcomes if o != "ok"]
    row = {
        "fault": name,
        "sent": len(load.outcomes),
        "failed": len(failed),
        "how": summary(failed),
        "fault_requests": got,
        "kept_serving": kept_serving(gw, gw_proc, model),
        "note": note,
    }
    print(f"  {name}: {row['sent']} sent, {row['failed']} failed ({row['how']}); {got}; {note}", flush=True)
    return row


def static_faults(logs: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Faults in front of two static fake backends."""
    b1, b2 = backend("backend-1", logs), backend("backend-2", logs)
    urls = [f"http://127.0.0.1:{b.port}#model=fake-model,id=b{n}" for n, b in enumerate((b1, b2), 1)]
    gw, gw_proc = gateway("gateway", logs, [x for u in urls for x in ("--backend", u)])
    rows = []
    try:

        def none() -> tuple[str, str]:
            return "-", "baseline"

        def kill_backend() -> tuple[str, str]:
            b1.signal(signal.SIGKILL)
            time.sleep(a.window_s)
            b1.restart()  # back for the next rows; the health probe re-admits it
            return "-", "backend-1 SIGKILLed with streams in flight; restarted after the window"

        def stall_backend() -> tuple[str, str]:
            b1.signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
            time.sleep(a.window_s)
            b1.signal(signal.SIGCONT)
            routable = {"source": "static", "routable": "true"}
            wait_for(lambda: metric(gw, "wattgate_gateway_instances", **routable) >= 2, "both routable again", 30)
            return "-", f"backend-1 SIGSTOPped for {a.window_s:g} s (first-byte deadline 3 s, total 6 s)"

        def slow_clients() -> tuple[str, str]:
            body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
            stream = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": True})
            sreq = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s" % (
                len(stream),
                stream.encode(),
            )
            with contextlib.ExitStack() as stack:
                pool = stack.enter_context(_threads(20))
                slow_bodies = [pool.submit(raw_exchange, gw, head + body[:10]) for _ in range(10)]
                readers = [pool.submit(raw_exchange, gw, sreq, 5.0) for _ in range(10)]  # read nothing for 5 s
                got = [status_of(f.result()) for f in slow_bodies]
                served = sum(b"data: [DONE]" in f.result() for f in readers)
            return f"slow bodies: {summary(got)}; slow readers: {served} of 10 served", "body deadline 3 s"

        def headers() -> tuple[str, str]:
            before = rss_mb(gw_proc)
            big = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
            got = [status_of(raw_exchange(gw, big)) for _ in range(20)]
            huge = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Huge: " + b"b" * (32 << 20) + b"\r\n\r\n"
            got.append(status_of(raw_exchange(gw, huge)))
            return summary(got), f"20 x 1 MB and 1 x 32 MB header; gateway RSS {before:.0f} -> {rss_mb(gw_proc):.0f} MB"

        def nested() -> tuple[str, str]:
            got = []
            with httpx.Client(timeout=30) as client:
                for depth in (1000, 100_000) * 10:
                    body = b'{"model": "fake-model", "messages": ' + b"[" * depth + b"]" * depth + b"}"
                    r = client.post(gw + "/v1/chat/completions", content=body)
                    got.append(f"{r.status_code} {_code(r.content)}")
            return summary(got), "10 x depth 1,000, 10 x depth 100,000"

        def poison() -> tuple[str, str]:
            before = metric(gw, "wattgate_gateway_ejections_total")
            with httpx.Client(timeout=30) as client:
                got = [ask(client, gw, "fake-model", False, POISON) for _ in range(3)]
            ejected = metric(gw, "wattgate_gateway_ejections_total") - before
            faults = metric(gw, "wattgate_gateway_request_faults_total")
            note = f"3 requests that make both backends drop the connection; {ejected:g} ejections, {faults:g} judged"
            return summary(got), note + " the request's fault"

        for name, fault in (
            ("none (baseline)", none),
            ("backend SIGKILL mid-stream", kill_backend),
            ("stalled backend", stall_backend),
            ("slow clients", slow_clients),
            ("oversized headers", headers),
            ("nested JSON", nested),
            ("request-caused failures", poison),
        ):
            rows.append(run(name, gw, gw_proc, "fake-model", fault, a))
        rows.append(half_open(logs, urls, a))
    finally:
        for p in (gw_proc, b1, b2):
            p.stop()
    return rows


def half_open(logs: Path, urls: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """1,100 connections that send half a head, against a gateway with a 1,024 open-file limit."""
    gw, gw_proc = gateway("gateway-limited", logs, [x for u in urls for x in ("--backend", u)], limited=True)
    host, port = gw.removeprefix("http://").split(":")
    socks: list[socket.socket] = []

    def attack() -> tuple[str, str]:
        t0 = time.monotonic()
        for _ in range(1100):
            s = socket.create_connection((host, int(port)), timeout=10)
            with contextlib.suppress(OSError):
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Ty")
            socks.append(s)
        with httpx.Client(timeout=10) as client:  # while they are held
            health = client.get(gw + "/health").status_code
            chat = ask(client, gw, "fake-model", False)
        closed = 0
        for s in socks:  # each is closed by the gateway: evicted earlier, or at its head deadline
            s.settimeout(max(0.01, t0 + 30 - time.monotonic()))
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            except OSError:  # still open at the end of the wait
                pass
        took = time.monotonic() - t0
        evicted = metric(gw, "wattgate_gateway_client_connections_closed_total", reason="evicted")
        timed_out = metric(gw, "wattgate_gateway_client_connections_closed_total", reason="header_timeout")
        got = f"/health {health}, chat {chat} while held; {closed} of 1100 closed by the gateway in {took:.1f} s"
        return got, f"file limit 1,024; {evicted:g} evicted, {timed_out:g} closed at the 3 s head deadline"

    try:
        return run("half-open connections", gw, gw_proc, "fake-model", attack, a)
    finally:
        for s in socks:
            s.close()
        gw_proc.stop()


def cluster_faults(logs: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Faults of the control plane: Redis, the planner and the agent (simulated GPUs and engines)."""
    model = "llama-sim"
    redis_server = EmbeddedRedis().start()
    url = redis_server.url
    planner_cmd = [PY, "-m", "wattgate", "planner", "--redis-url", url, "--nodes", "n1=8", "--pool-period-s", "2"]
    planner = Proc("planner", [*planner_cmd, "--lease-s", "3", "--min-rps", "0.05", "--time-limit-s", "1"], logs)
    state = Path(tempfile.mkdtemp(prefix="wattgate-faults-agent-"))
    agent_cmd = [PY, "-m", "wattgate", "agent", "--redis-url", url, "--node", "n1", "--gpus", "sim:8", "--engine"]
    agent_cmd += ["sim", "--model", model, "--state-dir", str(state), "--gpu-state-dir", str(state / "gpus")]
    agent_cmd += ["--tick-s", "0.5", "--sim-speed", "20", "--port-base", str(free_port()), "--stop-grace-s", "5"]
    agent = Proc("agent", agent_cmd, logs)
    gw, gw_proc = gateway("gateway-cluster", logs, ["--redis-url", url])
    rows = []
    try:
        ready = {"source": "registry", "routable": "true"}
        wait_for(lambda: metric(gw, "wattgate_gateway_instances", **ready) >= 1, "an agent instance routable", 120)
        settled = settle(gw, url, model, a)

        def none() -> tuple[str, str]:
            n = metric(gw, "wattgate_gateway_instances", **ready)
            return "-", f"baseline: {n:g} instance(s) planned and started by the planner and agent; {settled}"

        def kill_redis() -> tuple[str, str]:
            redis_server.kill()
            time.sleep(a.window_s / 2)
            redis_server.start()  # same port, empty: agents re-register, the planner re-publishes
            return "-", f"redis SIGKILLed, restarted empty after {a.window_s / 2:g} s"

        def kill_planner() -> tuple[str, str]:
            planner.signal(signal.SIGKILL)
            return "-", "planner SIGKILLed (not restarted)"

        def kill_agent() -> tuple[str, str]:
            agent.signal(signal.SIGKILL)  # its engines run in their own sessions and keep serving
            time.sleep(a.window_s)
            log = logs / "agent.log"
            start = log.stat().st_size
            agent.restart()

            def new_lines() -> str:
                with log.open(errors="replace") as f:
                    f.seek(start)
                    return f.read()

            wait_for(lambda: "agent n1:" in new_lines(), "the new agent running", 60)
            adopted = new_lines().count("left running by a previous agent")
            return "-", f"agent SIGKILLed; a new agent started after {a.window_s:g} s adopted {adopted} engine(s)"

        for name, fault in (
            ("none (cluster baseline)", none),
            ("Redis kill", kill_redis),
            ("planner kill", kill_planner),
            ("agent SIGKILL", kill_agent),
        ):
            rows.append(run(name, gw, gw_proc, model, fault, a))
    finally:
        for p in (gw_proc, agent, planner):
            p.stop()
        _kill_engines(state)
        redis_server.stop()
    return rows


def settle(gw: str, redis_url: str, model: str, a: argparse.Namespace, quiet_s: float = 12.0) -> str:
    """Run the ordinary load until the planner's layout for it has not changed for ``quiet_s`` and every
    planned instance is routable at the gateway (the planner re-plans as the load it sees rises)."""
    import redis  # noqa: PLC0415

    from wattgate.planner.contract import Keys, Plan  # noqa: PLC0415

    r = redis.Redis.from_url(redis_url)
    t0 = time.monotonic()
    layout: frozenset[tuple[str, str]] = frozenset()
    since = t0
    try:
        with Load(gw, model, a.workers):
            while time.monotonic() - t0 < 240:
                raw = r.get(Keys().plan)
                plan = Plan.from_json(raw) if raw else None
                now_layout = frozenset((i.id, i.pool) for i in plan.instances) if plan else frozenset()
                if now_layout != layout:
                    layout, since = now_layout, time.monotonic()
                routable = metric(gw, "wattgate_gateway_instances", source="registry", routable="true")
                if layout and time.monotonic() - since >= quiet_s and routable >= len(layout):
                    return f"layout settled under the load after {time.monotonic() - t0:.0f} s"
                time.sleep(1.0)
    finally:
        r.close()
    return "layout still moving after 240 s"


def _kill_engines(state: Path) -> None:
    """Engines outlive a SIGKILLed agent by design: stop the ones this run left."""
    with contextlib.suppress(OSError, ValueError):
        for entry in json.loads((state / "engines.json").read_text()).get("engines", []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(entry["pid"]), signal.SIGKILL)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(max_workers=n) as pool:
        yield pool


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-s", type=float, default=6.0, help="load after each fault (s)")
    ap.add_argument("--workers", type=int, default=4, help="ordinary client threads")
    ap.add_argument("--only", choices=["static", "cluster"], help="one group of faults")
    ap.add_argument("--logs", type=Path, help="keep every process's log in this directory (default: discarded)")
    a = ap.parse_args()
    print(f"gateway flags: {' '.join(GATEWAY_FLAGS)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="wattgate-faults-") as tmp:
        logs = a.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        rows = [] if a.only == "cluster" else static_faults(logs, a)
        rows += [] if a.only == "static" else cluster_faults(logs, a)
    print("\n| fault | ordinary requests sent | failed | how they failed | the fault's own requests | kept serving |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kept = "yes" if r["kept_serving"] else "**no**"
        print(
            f"| {r['fault']} | {r['sent']} | {r['failed']} | {r['how']} | {r['fault_requests']}; {r['note']} | {kept} |"
        )
    print(json.dumps({"bench": "faults", "source": "measured", "rows": rows}))
    return 0 if all(r["kept_serving"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
