"""End to end with servers wattgate does not manage: four emulated engines (``wattgate sim-backend``) started
outside wattgate on two simulated nodes, one ``wattgate agent --external`` per node, ``wattgate planner`` and
``wattgate gateway``, all processes on loopback with a real Redis. The plan gives the four a pool and a clock
each, the gateway routes by it, the agents lock the clocks, and stopping the agents releases them while the
engines keep running."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.test_agent_e2e import KEYS, MODEL, Load, Procs, locked_clocks
from tests.support import wait_for, wait_port
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import InstanceRecord, Plan
from wattgate.profiles.builtin import DEFAULT_PROFILE

pytestmark = pytest.mark.slow

NODES = {"n1": ("e0", "e1"), "n2": ("e2", "e3")}  # two TP4 engines on each 8-GPU node
GPUS = {"e0": (0, 1, 2, 3), "e1": (4, 5, 6, 7), "e2": (0, 1, 2, 3), "e3": (4, 5, 6, 7)}
SS = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}  # an SS request


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


def current_plan(r: redis.Redis) -> Plan | None:
    raw = r.get(KEYS.plan)
    return Plan.from_json(raw) if raw else None


def gateway_plan_version(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith("wattgate_gateway_plan_version "))
    return int(float(line.split()[1]))


def test_external_engines_get_pools_and_clocks_from_the_plan_and_are_released(
    procs: Procs, tmp_path: Path, redis_url: str
) -> None:
    ports = {e: free_port() for e in GPUS}
    gpu_dirs = {n: tmp_path / n / "sim-gpus" for n in NODES}
    for node, engines in NODES.items():  # the user's engines, started outside wattgate
        for e in engines:
            # their simulated GPUs share the node's state directory with its agent: the clocks it locks slow them
            engine = ["sim-backend", "--model", MODEL, "--tp", "4", "--gpus", ",".join(map(str, GPUS[e]))]
            engine += ["--gpu-state-dir", str(gpu_dirs[node]), "--port", str(ports[e]), "--speed", "20"]
            procs.start(e, *engine)
    for port in ports.values():
        wait_port(port, timeout_s=30)
    gw_port = free_port()
    procs.start("gateway", "gateway", "--redis-url", redis_url, "--port", str(gw_port), "--health-interval-s", "1")
    for node, engines in NODES.items():
        agent = ["agent", "--redis-url", redis_url, "--node", node, "--gpus", "sim:8", "--model", MODEL]
        agent += ["--gpu-state-dir", str(gpu_dirs[node]), "--state-dir", str(tmp_path / node / "state")]
        agent += ["--profile", DEFAULT_PROFILE, "--tick-s", "0.2", "--clock-interval-s", "1", "--load-window-s", "3"]
        for e in engines:
            gpus = ":".join(map(str, GPUS[e]))
            agent += ["--external", f"id={e},url=http://127.0.0.1:{ports[e]},gpus={gpus},engine=sim"]
        procs.start(f"agent-{node}", *agent)
    planner = ["planner", "--redis-url", redis_url, "--pool-period-s", "2", "--lease-s", "3", "--time-limit-s", "1"]
    procs.start("planner", *planner)
    wait_port(gw_port, timeout_s=30)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        plan = wait_for(
            lambda: (p := current_plan(r)) is not None and sorted(p.fixed) == sorted(GPUS) and p,
            "a plan giving the four engines pools and clocks",
            60,
        )
        given = {i.id: i for i in plan.instances}
        assert set(given) == set(GPUS)  # no managed instance: there are no managed GPUs
        for e, inst in given.items():
            node = next(n for n, es in NODES.items() if e in es)
            assert inst.node == node and tuple(inst.gpus) == GPUS[e] and inst.tp == 4
            assert inst.pool and inst.sm_clock_mhz > 0
        ss_pool = next(q for q, types in plan.serves.items() if "SS" in types)
        assert any(i.pool == ss_pool for i in given.values())

        def registry() -> dict[str, InstanceRecord]:
            return {k: InstanceRecord.from_json(v) for k, v in r.hgetall(KEYS.instances).items()}

        # the agents re-publish each engine's record with the pool the plan gave it (no restart)
        wait_for(
            lambda: (
                (p := current_plan(r)) is not None
                and all(rec.ready and rec.pool == p.fixed_pools().get(k) for k, rec in registry().items())
                and len(registry()) == 4
            ),
            "the registry showing the plan's pools",
            30,
        )
        # the agents lock every engine's GPUs (the clock loop, from the plan's pools)
        wait_for(
            lambda: all(
                all(locked_clocks(gpu_dirs[n], 8)[g] is not None for g in GPUS[e])
                for n, es in NODES.items()
                for e in es
            ),
            "every engine's GPUs locked",
            30,
        )
        # the gateway routes by the plan: each SS request goes to an engine of the pool the plan sends SS to
        checked = 0
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=30) as client:
            while checked < 8 and time.monotonic() < deadline:
                p = current_plan(r)
                assert p is not None
                if gateway_plan_version(gw_port) != p.version:
                    time.sleep(0.1)
                    continue
                resp = client.post(f"http://127.0.0.1:{gw_port}/v1/chat/completions", json=SS)
                assert resp.status_code == 200, resp.text
                after = current_plan(r)
                if after is None or after.version != p.version or gateway_plan_version(gw_port) != p.version:
                    continue  # re-planned meanwhile: judge the next one
                pool = next(q for q, types in p.serves.items() if "SS" in types)
                assert resp.headers["x-wattgate-pool"] == pool
                assert p.fixed_pools()[resp.headers["x-wattgate-instance"]] == pool
                checked += 1
        assert checked == 8
        with Load(f"http://127.0.0.1:{gw_port}/v1") as load:
            load.set(2.0, 8)
            wait_for(lambda: load.count() >= 10, "requests through the gateway under load", 40)
            load.set(0, 8)
        assert load.failures() == [], load.failures()
        # stopping the agents releases every clock they locked; the engines keep running, unregistered
        for node in NODES:
            rc = procs.stop(f"agent-{node}", signal.SIGTERM, timeout_s=40)
            log = procs.log(f"agent-{node}")
            assert rc == 0, log
            assert "Traceback" not in log, log
            assert locked_clocks(gpu_dirs[node], 8) == dict.fromkeys(range(8)), log
        assert all(procs.procs[e].poll() is None for e in GPUS)  # never stopped by wattgate
        assert registry() == {}
        assert procs.stop("planner") == 0, procs.log("planner")
    finally:
        r.close()
