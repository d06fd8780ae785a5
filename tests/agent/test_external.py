"""External servers (``wattgate agent --external``): the plan gives each a pool and a clock; a new pool is a
routing change made in place; the agent locks and releases their clocks and never starts, drains or stops them."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agent.agent_support import STANDIN, FakeGpu
from tests.support import wait_port
from wattgate import cli
from wattgate.agent.actuator import Actuator, Timeouts
from wattgate.agent.agent import Agent, follow_plan
from wattgate.agent.cli import register as register_agent
from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.base import EngineKind, EngineSpec
from wattgate.agent.engines.external import ExternalEngine
from wattgate.agent.errors import SettingsError
from wattgate.agent.reconcile import ActionKind, Actual, diff
from wattgate.agent.settings import from_args, parse_external
from wattgate.agent.store import AgentStore
from wattgate.agent.telemetry import Telemetry
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import (
    HEARTBEAT_REVISION,
    Heartbeat,
    InstanceRecord,
    Keys,
    Plan,
    PlannedInstance,
    UnmanagedInstance,
)

KEYS = Keys()


def ext(iid: str, gpus: list[int], pool: str = "", clock: int = 0) -> PlannedInstance:
    return PlannedInstance(iid, pool, "n1", gpus, len(gpus), clock, 0.0, 0.0)


def fixed_plan(version: int, *given: tuple[str, str, list[int], int]) -> Plan:
    inst = [PlannedInstance(i, pool, "n1", g, len(g), mhz, 1.0, 500.0) for i, pool, g, mhz in given]
    return Plan(version, time.time(), "m", inst, {}, 0.0, 0.0, fixed=[i.id for i in inst])


def test_a_new_pool_for_an_unmanaged_server_is_set_in_place() -> None:
    running = {"e0": Actual("e0", "SS", (0, 1), 2, 1200)}
    moved = [PlannedInstance("e0", "MM", "n1", [0, 1], 2, 1600, 1.0, 500.0)]
    d = diff(moved, running, list(range(4)), follow_plan_clocks=True, repool_in_place=True)
    assert [(a.kind, a.instance_id) for a in d.actions] == [(ActionKind.SET_POOL, "e0"), (ActionKind.SET_CLOCK, "e0")]
    # a managed instance with a new pool is replaced (drain, stop, start), as before
    managed = diff(moved, running, list(range(4)))
    assert {a.kind for a in managed.actions} >= {ActionKind.DRAIN, ActionKind.STOP, ActionKind.START}


def test_follow_plan_takes_the_pool_and_clock_the_plan_gives_each_server() -> None:
    servers = [ext("e0", [0, 1], "SS"), ext("e1", [2, 3])]
    plan = fixed_plan(3, ("e0", "LL", [0, 1], 1400), ("e1", "MM", [4, 5], 1000))  # e1: other GPUs, not this one
    out = {p.id: p for p in follow_plan(servers, plan, "n1")}
    assert (out["e0"].pool, out["e0"].sm_clock_mhz, out["e0"].load_rps) == ("LL", 1400, 1.0)
    assert out["e1"] == servers[1]
    not_fixed = Plan(4, 0.0, "m", plan.instances, {}, 0.0, 0.0)  # a plan that does not list them as fixed
    assert follow_plan(servers, not_fixed, "n1") == servers
    assert follow_plan(servers, None, "n1") == servers


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--port", str(port)])
    try:
        wait_port(port)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _agent(tmp: Path, url: str, gpus: list[FakeGpu], port: int) -> Agent:
    clocks = ClockController(gpus, tmp / "locks.json")
    store = AgentStore(url, KEYS, timeout_s=0.5)

    def make(spec: EngineSpec) -> ExternalEngine:
        return ExternalEngine(spec, f"http://127.0.0.1:{port}", EngineKind.VLLM)

    act = Actuator(
        node="n1",
        model="m",
        gpus=gpus,
        clocks=clocks,
        store=store,
        make_engine=make,
        engines_file=tmp / "engines.json",
        timeouts=Timeouts(drain_s=2, drain_notice_s=0.05, start_s=20, poll_s=0.05),
    )
    servers = [UnmanagedInstance("e0", 2, [0, 1], "m", "vllm", "SS")]
    return Agent(
        node="n1",
        actuator=act,
        clocks=clocks,
        store=store,
        telemetry=Telemetry("n1", gpus, clocks, act, managed=False, unmanaged=servers),
        externals=[ext("e0", [0, 1], "SS")],
    )


def test_the_agent_follows_the_plans_pools_and_clocks_and_never_stops_the_server(
    tmp_path: Path, redis_url: str, server: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = server
    gpus = [FakeGpu(0), FakeGpu(1), FakeGpu(2)]
    agent = _agent(tmp_path, redis_url, gpus, port)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    states: list[str] = []

    def record() -> InstanceRecord:
        rec = InstanceRecord.from_json(r.hget(KEYS.instances, "e0") or "")
        states.append(rec.state)
        return rec

    try:
        agent.tick()  # no plan yet: the server is registered with the pool it was given, no clock locked
        assert (record().pool, record().state) == ("SS", "ready") and gpus[0].locked is None
        r.set(KEYS.plan, fixed_plan(1, ("e0", "ML", [0, 1], 1400)).to_json())
        agent.tick()  # no clock loop (no profile): the plan's clock is locked, the pool set in place
        assert record().pool == "ML" and gpus[0].locked == 1400 and gpus[1].locked == 1400 and gpus[2].locked is None
        agent.publish()
        beat = Heartbeat.from_json(r.get(KEYS.heartbeat("n1")) or "")
        assert not beat.managed and [(u.id, u.pool, u.tp) for u in beat.unmanaged] == [("e0", "ML", 2)]
        assert beat.revision == HEARTBEAT_REVISION
        r.set(KEYS.plan, fixed_plan(2, ("e0", "SS", [0, 1], 1000)).to_json())
        agent.tick()
        assert record().pool == "SS" and gpus[0].locked == 1000
        assert set(states) == {"ready"}  # never starting, draining or gone: a routing change only
    finally:
        agent.shutdown()
        agent.store.close()
        r.close()
    assert gpus[0].locked is None and gpus[1].locked is None  # released
    assert proc.poll() is None  # never stopped


def test_external_options() -> None:
    e = parse_external("id=e0,url=http://10.0.0.5:8000/,gpus=0:1,model=llama,engine=tgi")
    assert (e.id, e.url, e.pool, e.gpus, e.model, e.engine) == (
        "e0",
        "http://10.0.0.5:8000",
        "",
        (0, 1),
        "llama",
        "tgi",
    )
    assert parse_external("id=e1,url=http://h:1,gpus=2,pool=ml,engine=sim").engine == "simulated"
    for bad, message in (
        ("id=e0,url=http://h:1,gpus=0,colour=red", "unknown key"),
        ("id=e0,url=http://h:1,gpus=0,engine=sglang", "engine must be"),
        ("id=e0,url=http://h:1,gpus=0:0", "once each"),
        ("id=e0,url=http://h:1", "expected"),
    ):
        with pytest.raises(SettingsError, match=message):
            parse_external(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "vllm", "--model", "m", "--external", "id=a,url=http://h:1,gpus=0"], "node of external servers"),
        (["--external", "id=a,url=http://h:1,gpus=0", "--external", "id=b,url=http://h:2,gpus=0"], "own GPUs"),
    ],
)
def test_bad_external_combinations_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["agent", "--redis-url", "redis://x", "--node", "n1", *args]) == 2
    assert message in capsys.readouterr().err


def test_external_alone_makes_a_node_of_external_servers() -> None:
    parser = argparse.ArgumentParser()
    register_agent(parser.add_subparsers())
    args = parser.parse_args(
        ["agent", "--redis-url", "redis://x", "--node", "n1", "--external", "id=a,url=http://h:1,gpus=0"]
    )
    assert from_args(args).engine is EngineKind.EXTERNAL
