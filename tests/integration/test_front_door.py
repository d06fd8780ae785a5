"""The front door holds, with ``wattgate gateway`` as a process under a 1,024 open-file limit: 1,100
connections that send half a request head do not lock out ``/health`` or a chat request while they are
held, and every one of them is closed by the head deadline."""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.fake_backend import FakeBackend
from tests.integration.llama import wait_http
from tests.support import UvicornThread
from wattgate.embedded_redis import free_port
from wattgate.procs import stop_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FILE_LIMIT = 1024
HALF_OPEN = 1100
HEADER_TIMEOUT_S = 5.0
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: applic"


# ``python -m wattgate`` with the open-file limit (soft and hard) set first, in the gateway's own process
LIMITED = (
    "import resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, {FILE_LIMIT})); "
    "from wattgate.cli import main; sys.exit(main(sys.argv[1:]))"
)


@contextlib.contextmanager
def gateway_process(backend: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = [sys.executable, "-c", LIMITED, "gateway", "--backend", backend, "--port", str(port)]
    cmd += ["--client-header-timeout-s", str(HEADER_TIMEOUT_S), "--classifier", "max_tokens"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WATTGATE_REDIS_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", proc, 60, log)
        yield url, proc
    finally:
        stop_process(proc, timeout_s=15, group=True)


def closed_by_peer(sock: socket.socket) -> bool:
    """Read what is there; True once the gateway closed the connection (EOF or reset)."""
    try:
        while chunk := sock.recv(65536):
            assert chunk.startswith(b"HTTP/1.1 408") or b"request_timeout" in chunk or not chunk.startswith(b"HTTP")
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_half_open_connections_do_not_lock_out_health_or_chat(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HALF_OPEN + 200:
        pytest.skip(f"this test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with (
        UvicornThread(FakeBackend(model="fake-model", record=False)) as backend,
        gateway_process(f"{backend.url}#model=fake-model", tmp_path / "gateway.log") as (gw, proc),
        contextlib.ExitStack() as stack,
    ):
        host, port = gw.removeprefix("http://").split(":")
        half_open = []
        t0 = time.monotonic()
        for _ in range(HALF_OPEN):
            sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
            with contextlib.suppress(OSError):  # the gateway may have closed it already (evicted)
                sock.sendall(HALF_HEAD)
            half_open.append(sock)
        opened_s = time.monotonic() - t0
        # while they are held: the gateway still answers
        assert httpx.get(gw + "/health", timeout=10).status_code == 200
        client = openai.OpenAI(base_url=gw + "/v1", api_key="none", max_retries=0, timeout=10)
        reply = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "t0 t1 t2"
        assert proc.poll() is None
        # and every half-open connection is closed by the head deadline (evicted earlier, or answered 408)
        selector = selectors.DefaultSelector()
        for sock in half_open:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ = set(half_open)
        deadline = t0 + opened_s + HEADER_TIMEOUT_S + 20
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if closed_by_peer(sock):
                    selector.unregister(sock)
                    open_.discard(sock)
        assert not open_, f"{len(open_)} of {HALF_OPEN} half-open connections still open"
        metrics = httpx.get(gw + "/metrics", timeout=10).text
        closed = {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("wattgate_gateway_client_connections_closed_total{")
        }
        assert closed.get("evicted", 0) + closed.get("header_timeout", 0) >= HALF_OPEN
        assert closed.get("header_timeout", 0) > 0  # the deadline, not only eviction, closed some
        limit = [line for line in (tmp_path / "gateway.log").read_text().splitlines() if "client connections" in line]
        assert "at most 480 client connections" in limit[0]  # (1,024 - 64) / 2: the file limit was in force
        assert httpx.get(gw + "/health", timeout=10).status_code == 200
        assert proc.poll() is None
    assert "Too many open files" not in (tmp_path / "gateway.log").read_text(errors="replace")
