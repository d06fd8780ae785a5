"""A first run that fails loudly and correctly, through real ``wattgate`` processes: a busy port, a Redis that
does not answer, a backend that answers nothing, an unreadable config each end the command within seconds
with one line naming the cause; a down backend gives 503 with Retry-After, not 404; and
``WATTGATE_API_KEYS_ENV`` turns the key check on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread, wait_for, wait_port
from wattgate.embedded_redis import free_port
from wattgate.procs import stop_process

ROOT = Path(__file__).resolve().parents[1]
QUICK_S = 10.0  # "within seconds": every start-up failure here must end the process by then
FAST = ["--classifier", "max_tokens"]  # gateways that serve here route by max_tokens: no tokenizers to load


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATTGATE_")}
    return {**clean, "PYTHONPATH": str(ROOT), **(extra or {})}


def _run(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 60) -> tuple[int, str, float]:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "wattgate", *args],
        capture_output=True,
        text=True,
        env=_env(env),
        timeout=timeout_s,
        check=False,
        cwd=ROOT,
    )
    return res.returncode, res.stderr + res.stdout, time.monotonic() - t0


@contextmanager
def busy_port() -> Iterator[int]:
    """A port another process (here: this test) is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _one_error_line(out: str, command: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(f"wattgate {command}: error: ")]
    assert len(lines) == 1, out
    assert "Traceback" not in out, out
    return lines[0]


def test_gateway_on_a_busy_port_exits_at_once_naming_it() -> None:
    with UvicornThread(FakeBackend(model="m")) as backend, busy_port() as port:
        code, out, took = _run(["gateway", "--backend", backend.url, "--port", str(port)])
    assert code != 0 and took < QUICK_S
    line = _one_error_line(out, "gateway")
    assert f"cannot listen on 127.0.0.1:{port}: the gateway port is already in use" in line


def test_gateway_with_redis_on_a_busy_port_exits_at_once(redis_url: str) -> None:
    """The case that used to hang in shutdown and ignore SIGTERM."""
    with busy_port() as port:
        code, out, took = _run(["gateway", "--redis-url", redis_url, "--port", str(port)])
    assert code != 0 and took < QUICK_S
    assert f"127.0.0.1:{port}" in _one_error_line(out, "gateway")


def test_gateway_whose_redis_does_not_answer_exits_naming_it() -> None:
    dead = free_port()
    code, out, took = _run(
        ["gateway", "--redis-url", f"redis://:secret@127.0.0.1:{dead}/0", "--port", str(free_port())]
    )
    assert code == 1 and took < QUICK_S
    line = _one_error_line(out, "gateway")
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{dead}/0" in line and "secret" not in out


def test_gateway_whose_only_backend_answers_nothing_exits_naming_it() -> None:
    dead = free_port()
    code, out, took = _run(["gateway", "--backend", f"http://127.0.0.1:{dead}", "--port", str(free_port())])
    assert code == 1 and took < QUICK_S
    assert f"no backend answers: http://127.0.0.1:{dead} (connection refused)" in _one_error_line(out, "gateway")


def test_gateway_whose_only_backend_accepts_but_never_answers_exits_naming_it() -> None:
    with busy_port() as silent:  # accepts connections (the backlog) and never sends a byte
        code, out, took = _run(["gateway", "--backend", f"http://127.0.0.1:{silent}", "--port", str(free_port())])
    assert code == 1 and took < QUICK_S
    assert f"no backend answers: http://127.0.0.1:{silent} (no answer within 2 s)" in _one_error_line(out, "gateway")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read config file"),
        ("port: [\n", "is not valid YAML (line 2, column 1)"),
        ("- a\n", "must be a mapping of option: value"),
        ("port: 80x\n", "port: expected an integer, got '80x'"),
    ],
)
def test_gateway_with_an_unreadable_config_exits_2(tmp_path: Path, text: str | None, message: str) -> None:
    config = tmp_path / "gw.yaml"
    if text is not None:
        config.write_text(text)
    code, out, took = _run(["gateway", "--config", str(config)])
    assert code == 2 and took < QUICK_S
    assert message in _one_error_line(out, "gateway")


def test_planner_and_retrain_whose_redis_does_not_answer_exit_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for command in (["planner"], ["classifier", "retrain"]):
        code, out, took = _run([*command, "--once"] if command == ["planner"] else command, {"WATTGATE_REDIS_URL": url})
        assert code == 1 and took < QUICK_S, out
        assert f"cannot reach Redis at {url}" in _one_error_line(out, " ".join(command))


def test_agent_whose_redis_does_not_answer_exits_before_touching_a_gpu(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = ["agent", "--node", "n1", "--gpu-kind", "simulated:2", "--engine", "simulated", "--model", "m"]
    code, out, took = _run([*args, "--state-dir", str(tmp_path / "state")], {"WATTGATE_REDIS_URL": url})
    assert code == 1 and took < QUICK_S
    assert f"cannot reach Redis at {url}" in _one_error_line(out, "agent")
    assert not (tmp_path / "state" / "sim-gpus").exists()


def test_agent_whose_metrics_port_is_busy_exits_naming_it(tmp_path: Path, redis_url: str) -> None:
    args = ["agent", "--node", "n1", "--gpu-kind", "simulated:2", "--engine", "simulated", "--model", "m"]
    with busy_port() as port:
        code, out, took = _run(
            [*args, "--state-dir", str(tmp_path), "--redis-url", redis_url, "--metrics-port", str(port)]
        )
    assert code == 1 and took < QUICK_S
    assert f"--metrics-port: cannot listen on 0.0.0.0:{port}" in _one_error_line(out, "agent")


def test_sim_backend_on_a_busy_port_exits_naming_it() -> None:
    with busy_port() as port:
        code, out, took = _run(["sim-backend", "--model", "m", "--tp", "2", "--port", str(port)])
    assert code == 1 and took < QUICK_S
    assert f"127.0.0.1:{port}: the sim-backend port is already in use" in _one_error_line(out, "sim-backend")


def test_demo_on_a_busy_port_exits_before_starting_anything(tmp_path: Path) -> None:
    with busy_port() as port:
        code, out, took = _run(["demo", "--port", str(port), "--run-dir", str(tmp_path / "run")])
    assert code != 0 and took < QUICK_S
    assert f"cannot listen on 127.0.0.1:{port}" in _one_error_line(out, "demo")
    assert not (tmp_path / "run").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (["classifier", "eval", "--data", "MISSING"], "classifier eval", "cannot read MISSING: no such file"),
        (["demo", "--trace", "MISSING"], "demo", "cannot read trace MISSING"),
        (["simulate", "MISSING"], "simulate", "trace MISSING does not exist"),
        (["plan", "--gpus", "8", "--load", "SS=1", "--profile", "MISSING"], "plan", "'MISSING' is neither"),
    ],
)
def test_a_missing_input_file_is_one_line_and_exit_2_at_once(
    tmp_path: Path, args: list[str], command: str, message: str
) -> None:
    missing = str(tmp_path / "nope")
    code, out, took = _run([missing if a == "MISSING" else a for a in args])
    assert code == 2 and took < QUICK_S, out
    assert message.replace("MISSING", missing) in _one_error_line(out, command)


def test_demo_prints_the_last_lines_of_a_process_that_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "node1").write_text("a file where the agent's state directory should be")
    args = ["demo", "--port", str(free_port()), "--run-dir", str(run_dir), "--duration-s", "5"]
    code, out, _ = _run([*args, "--nodes", "1"], timeout_s=150)
    assert code == 1, out
    assert "wattgate demo: agent-node1 exited with code 1; the last lines of" in out
    assert "  wattgate agent: error: " in out and "Not a directory" in out  # the agent's own line, indented
    assert "all processes stopped" in out


@pytest.fixture
def two_backends_one_down(tmp_path: Path) -> Iterator[tuple[str, int, str]]:
    """A gateway in front of a live backend (model ``up``), a dead one without a model hint and a dead one
    hinted ``model=gone``; yields its URL, port and the file its log goes to."""
    dead1, dead2, port = free_port(), free_port(), free_port()
    with UvicornThread(FakeBackend(model="up")) as live:
        log = tmp_path / "gateway.log"
        with log.open("w") as out:
            args = ["gateway", *FAST, "--port", str(port), "--retry-after-s", "7", "--backend", live.url]
            args += ["--backend", f"http://127.0.0.1:{dead1}", "--backend", f"http://127.0.0.1:{dead2}#model=gone"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "wattgate", *args],
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            try:
                wait_port(port, timeout_s=60)
                yield f"http://127.0.0.1:{port}", port, str(log)
            finally:
                stop_process(proc, timeout_s=20)


def test_a_model_whose_only_backends_are_down_gets_503_with_retry_after(
    two_backends_one_down: tuple[str, int, str],
) -> None:
    url, _, log = two_backends_one_down
    with openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        ok = client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content
        for model in ("gone", "served-by-the-dead-one-maybe"):
            r = httpx.post(
                f"{url}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert r.status_code == 503, (model, r.text)  # tried in panic (probe-failing), refused, or models unknown
            assert r.headers["retry-after"] == "7"
            assert r.json()["error"]["type"] == "server_error"
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gone", messages=[{"role": "user", "content": "hi"}])
    text = wait_for(lambda: Path(log).read_text() if "gateway ready" in Path(log).read_text() else None, "ready line")
    assert "1 of 3 static backend(s) reachable; not answering: static-2" in text


def test_a_model_nobody_serves_is_still_404_when_every_backend_answers() -> None:
    port = free_port()
    with UvicornThread(FakeBackend(model="up")) as live:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wattgate", "gateway", *FAST, "--port", str(port), "--backend", live.url],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, timeout_s=60)
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        finally:
            stop_process(proc, timeout_s=20)


def test_api_keys_env_from_the_environment_turns_key_checks_on() -> None:
    port = free_port()
    env = _env({"WATTGATE_API_KEYS_ENV": "CLIENT_KEYS", "CLIENT_KEYS": "k1,k2", "WATTGATE_PORT": str(port)})
    with UvicornThread(FakeBackend(model="m")) as live:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wattgate", "gateway", *FAST, "--backend", live.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, timeout_s=60)
            base = f"http://127.0.0.1:{port}/v1"
            with (
                openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as wrong,
                pytest.raises(openai.AuthenticationError),
            ):
                wrong.models.list()
            assert httpx.get(f"{base}/models").status_code == 401
            with openai.OpenAI(base_url=base, api_key="k2", max_retries=0) as right:
                assert [m.id for m in right.models.list()] == ["m"]
        finally:
            stop_process(proc, timeout_s=20)
    code, out, _ = _run(["gateway", "--backend", "http://127.0.0.1:9"], {"WATTGATE_API_KEYS_ENV": "NOT_SET_ANYWHERE"})
    assert code == 2 and "api_keys_env: environment variable NOT_SET_ANYWHERE is not set" in out
    code, out, _ = _run(
        ["gateway", "--backend", "http://127.0.0.1:9"], {"WATTGATE_API_KEYS_ENV": "CLIENT_KEYS", "CLIENT_KEYS": " , "}
    )
    assert code == 2 and "api_keys_env: environment variable CLIENT_KEYS holds no key" in out


def test_sigterm_stops_a_gateway_with_redis_promptly(redis_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattgate", "gateway", *FAST, "--redis-url", redis_url, "--port", str(port)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, timeout_s=60)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - t0 < QUICK_S
    finally:
        stop_process(proc, timeout_s=5)
        assert proc.stderr is not None
        proc.stderr.close()
