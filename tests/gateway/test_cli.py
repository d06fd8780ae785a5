"""``wattgate gateway`` as a user runs it: a subprocess in front of an existing server, one command."""

from __future__ import annotations

import os
import subprocess
import sys

import openai

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread, wait_port
from wattgate.embedded_redis import free_port


def test_one_command_in_front_of_an_existing_server() -> None:
    with UvicornThread(FakeBackend(model="my-llm")) as backend:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        cmd = [
            sys.executable,
            "-m",
            "wattgate",
            "gateway",
            "--backend",
            backend.url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_port(port, timeout_s=30)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            assert [m.id for m in client.models.list()] == ["my-llm"]
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="my-llm", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            assert text == "t0 t1 t2 "
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=20)
        assert proc.returncode in (0, -15), err.decode()  # uvicorn re-raises SIGTERM after a graceful shutdown
        assert b"Traceback" not in err


def test_bad_options_exit_2_with_a_clear_message() -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for args, message in (
        ([], "nothing to route to"),
        (["--backend", "localhost:8000"], "url must be http(s)://host:port"),
        (["--backend", "http://h:1", "--config", "/nonexistent.yaml"], "cannot read config file"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "wattgate", "gateway", *args], env=env, capture_output=True, timeout=30, check=False
        )
        assert res.returncode == 2
        assert message in res.stderr.decode()
        assert b"Traceback" not in res.stderr
