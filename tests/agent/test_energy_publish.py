"""The agent publishes each instance's energy counter (the sum of its GPUs') into the energy hash every pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agent.agent_support import FakeGpu
from tests.agent.test_agent_loop import KEYS, build, plan
from wattgate.agent.gpu.base import GpuLibraryError
from wattgate.planner.contract import InstanceEnergy


class CountingGpu(FakeGpu):
    """A fake GPU whose counter is set by the test, and that can fail its energy reading."""

    def __init__(self, index: int, energy_j: float) -> None:
        super().__init__(index)
        self.counter_j = energy_j
        self.broken = False

    def energy_j(self) -> float:
        if self.broken:
            raise GpuLibraryError("energy counter unreadable")
        return self.counter_j


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def energy(r: redis.Redis) -> dict[str, InstanceEnergy]:
    return {k: InstanceEnergy.from_json(v) for k, v in r.hgetall(KEYS.energy).items()}


def test_each_instance_publishes_the_sum_of_its_gpus_counters_and_is_removed_with_it(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    gpus = [CountingGpu(0, 1000.0), CountingGpu(1, 2000.0), CountingGpu(2, 50.0)]
    agent = build(tmp_path, redis_url, gpus)  # type: ignore[arg-type]
    r.set(KEYS.plan, plan(1, ("a", "SS", [0, 1]), ("b", "SM", [2])).to_json())
    try:
        agent.tick()
        agent.publish(now=1_765_000_000.0)
        got = energy(r)
        assert set(got) == {"a", "b"}
        a = got["a"]
        assert (a.energy_j, a.gpus, a.node, a.ts, a.source) == (3000.0, [0, 1], "n1", 1_765_000_000.0, "modelled")
        assert a.power_w == pytest.approx(2 * (100.0 + 198.0))  # FakeGpu power at the top clock, both GPUs
        gpus[0].counter_j += 400.0
        gpus[2].broken = True  # b's only GPU cannot be read: b gets no counter this pass, a goes on
        agent.publish(now=1_765_000_001.0)
        got = energy(r)
        assert got["a"].energy_j == 3400.0 and got["a"].ts == 1_765_000_001.0
        assert got["b"].ts == 1_765_000_000.0  # the last good reading stays; readers see it age
        gpus[2].broken = False
        r.set(KEYS.plan, plan(2, ("a", "SS", [0, 1])).to_json())
        agent.tick()
        assert set(energy(r)) == {"a"}  # b stopped: its counter left the hash with its record
    finally:
        agent.shutdown()
