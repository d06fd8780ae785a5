"""End to end: ``wattgate gateway`` as a process, an instance an agent registered in a real Redis, the openai client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import openai
import redis

from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread, wait_port
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import InstanceRecord, Keys, Observation


def test_registered_instance_served_streamed_and_recorded(redis_url: str) -> None:
    keys = Keys()
    with UvicornThread(FakeBackend(model="llm")) as engine:
        rec = InstanceRecord(id="n1-gpu0", base_url=engine.url, model="llm", pool="SS", node="n1", state="ready")
        client = redis.Redis.from_url(redis_url)
        client.hset(keys.instances, rec.id, rec.to_json())  # what an agent does on start-up
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "wattgate",
            "gateway",
            "--redis-url",
            redis_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE)
        try:
            wait_port(port, timeout_s=30)

            async def call() -> str:
                ac = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
                deadline = time.monotonic() + 10
                while [m.id async for m in ac.models.list()] != ["llm"]:
                    assert time.monotonic() < deadline, "registered instance never appeared"
                    await asyncio.sleep(0.05)
                stream = await ac.chat.completions.create(
                    model="llm", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=50
                )
                text = "".join([c.choices[0].delta.content or "" async for c in stream])
                await ac.close()
                return text

            assert asyncio.run(call()) == "t0 t1 t2 "
            deadline = time.monotonic() + 10
            while client.xlen(keys.observations) < 1:
                assert time.monotonic() < deadline, "no observation recorded"
                time.sleep(0.05)
            ((_, fields),) = client.xrange(keys.observations)
            obs = Observation.from_json(fields[b"json"])
            assert (obs.instance, obs.pool, obs.output_tokens, obs.status) == ("n1-gpu0", "SS", 3, 200)
            assert obs.ttft_s is not None and obs.ttft_s > 0
            # the process routes with the shipped trained classifier: its numeric features are recorded
            assert obs.features and all(isinstance(v, float) for v in obs.features.values())
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
            client.close()
        assert b"Traceback" not in err, err.decode()
