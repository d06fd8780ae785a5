"""``wattgate agent`` options: bad input gets a clear message and exit 2; external engines are
registered and left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.agent.agent_support import STANDIN, fake_nvml_fixture  # noqa: F401 (the fake_nvml_dir fixture)
from tests.agent.nvml_support import locked_clocks, nvml_env, write_state
from tests.support import wait_for, wait_port
from wattgate import cli
from wattgate.agent.errors import SettingsError
from wattgate.agent.settings import parse_external
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import Heartbeat, InstanceRecord, Keys


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "http://x", "--node", "n1", "--model", "m"], "--redis-url"),
        (["--redis-url", "redis://x", "--node", "bad name", "--model", "m"], "--node"),
        (["--redis-url", "redis://x", "--node", "n1", "--gpus", "sim:0", "--model", "m"], "--gpu-kind"),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--tbt-s", "fast"], "--tbt-s"),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--metrics-port", "70000"], "--metrics-port"),
        (["--redis-url", "redis://x", "--node", "n1", "--engine", "external"], "--external"),
        (["--redis-url", "redis://x", "--node", "n1", "--engine", "external", "--external", "id=a"], "--external"),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--ttft-s", "1,2"], "--ttft-s"),
        (["--redis-url", "redis://x", "--node", "n1"], "--model"),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--engine", "llama.cpp"], "--model-file"),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--start-retries", "0"], "--start-retries"),
        (
            ["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--engine", "tgi", "--sleep-mode"],
            "--engine vllm (vLLM's sleep mode) or sim",
        ),
        (["--redis-url", "redis://x", "--node", "n1", "--model", "m", "--sleep-timeout-s", "0"], "--sleep-timeout-s"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["agent", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattgate agent: ") and message in err


def test_parse_external() -> None:
    e = parse_external("id=e0,url=http://10.0.0.5:8000/,pool=sm,gpus=0:1")
    assert (e.id, e.url, e.pool, e.gpus) == ("e0", "http://10.0.0.5:8000", "SM", (0, 1))
    with pytest.raises(SettingsError, match="pool"):
        parse_external("id=e0,url=http://h:1,pool=XX,gpus=0")


def test_external_engine_is_registered_never_stopped(fake_nvml_dir: Path, tmp_path: Path, redis_url: str) -> None:
    state = tmp_path / "nvml"
    write_state(state)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(STANDIN), "--port", str(port)])
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    agent = None
    try:
        wait_port(port)
        cmd = [sys.executable, "-m", "wattgate", "agent", "--redis-url", redis_url, "--node", "n1"]
        cmd += ["--engine", "external", "--external", f"id=e0,url=http://127.0.0.1:{port},pool=SS,gpus=1"]
        cmd += ["--state-dir", str(tmp_path / "st"), "--tick-s", "0.1"]
        log = (tmp_path / "agent.log").open("wb")
        agent = subprocess.Popen(cmd, env=nvml_env(fake_nvml_dir, state), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while (raw := r.hget(Keys().instances, "e0")) is None or not InstanceRecord.from_json(raw).ready:
            assert time.monotonic() < deadline and agent.poll() is None, "external instance not registered"
            time.sleep(0.05)
        rec = InstanceRecord.from_json(raw)
        assert rec.base_url == f"http://127.0.0.1:{port}" and rec.engine == "external" and rec.gpus == [1]
        beat = wait_for(lambda: r.get(Keys().heartbeat("n1")), "the agent's heartbeat")
        assert not Heartbeat.from_json(beat).managed  # the planner must not plan onto this node's GPUs
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert server.poll() is None  # never stopped
        assert r.hget(Keys().instances, "e0") is None
        assert locked_clocks(state) == {0: 0, 1: 0}
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        server.terminate()
        server.wait(timeout=10)
        r.close()
