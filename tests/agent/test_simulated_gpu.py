"""The simulated GPU: clocks, lock/reset, modelled power and energy, shared state between processes, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wattgate.agent.gpu.base import (
    Gpu,
    GpuInvalidArgumentError,
    GpuLibraryError,
    GpuNotSupportedError,
    GpuPermissionError,
)
from wattgate.agent.gpu.simulated import H100_SM_CLOCKS_MHZ, SimulatedGpu, open_simulated_gpus


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_is_a_gpu_with_h100_clocks_and_modelled_source() -> None:
    gpu = SimulatedGpu(None, 3)
    assert isinstance(gpu, Gpu)
    assert gpu.index == 3 and gpu.source == "modelled" and "H100" in gpu.name
    clocks = gpu.supported_sm_clocks_mhz()
    assert clocks == tuple(sorted(clocks)) and clocks[0] == 210 and clocks[-1] == 1980
    assert {800, 1000, 1200, 1400, 1600, 1800, 1980} <= set(clocks)
    assert gpu.uuid != SimulatedGpu(None, 4).uuid


def test_lock_and_reset() -> None:
    gpu = SimulatedGpu(None, 0)
    assert gpu.sm_clock_mhz() == 1980 and gpu.locked_sm_clock_mhz() is None
    gpu.lock_sm_clock(1200)
    assert gpu.sm_clock_mhz() == 1200 and gpu.locked_sm_clock_mhz() == 1200
    gpu.reset_sm_clock()
    assert gpu.sm_clock_mhz() == 1980
    with pytest.raises(GpuInvalidArgumentError, match="not a supported SM clock"):
        gpu.lock_sm_clock(1234)
    assert 1234 not in H100_SM_CLOCKS_MHZ


def test_energy_integrates_power_over_injected_time() -> None:
    clock = FakeTime()
    gpu = SimulatedGpu(None, 0, idle_power_w=70.0, now_s=clock)
    assert gpu.power_w() == 70.0 and gpu.energy_j() == 0.0
    clock.t += 10
    assert gpu.energy_j() == pytest.approx(700.0)
    gpu.set_power_w(400.0)
    clock.t += 5
    assert gpu.power_w() == 400.0
    assert gpu.energy_j() == pytest.approx(700.0 + 2000.0)
    gpu.set_idle()
    clock.t += 1
    assert gpu.energy_j() == pytest.approx(2770.0)
    with pytest.raises(GpuInvalidArgumentError):
        gpu.set_power_w(-1.0)


def test_agent_and_engine_share_state_through_the_directory(tmp_path: Path) -> None:
    clock = FakeTime()
    agent = SimulatedGpu(tmp_path, 1, now_s=clock)
    engine = SimulatedGpu(tmp_path, 1, now_s=clock, writer="sim-backend")
    other = SimulatedGpu(tmp_path, 2, now_s=clock)
    agent.lock_sm_clock(1000)
    assert engine.sm_clock_mhz() == 1000 and other.sm_clock_mhz() == 1980
    clock.t += 2
    engine.set_power_w(350.0)
    clock.t += 4
    assert agent.power_w() == 350.0
    assert agent.energy_j() == pytest.approx(2 * 70.0 + 4 * 350.0)
    control = json.loads((tmp_path / "gpu1.control.json").read_text())
    activity = json.loads((tmp_path / "gpu1.activity.json").read_text())
    assert control["format"] == "wattgate-simgpu-control" and control["locked_sm_clock_mhz"] == 1000
    assert activity["format"] == "wattgate-simgpu-activity" and activity["power_w"] == 350.0
    assert activity["writer"] == "sim-backend"
    # a new process attaching later keeps the same counter (no reset to zero)
    late = SimulatedGpu(tmp_path, 1, now_s=clock)
    assert late.energy_j() == pytest.approx(agent.energy_j())
    agent.reset_sm_clock()
    assert engine.sm_clock_mhz() == 1980
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_fault_injection_in_memory() -> None:
    gpu = SimulatedGpu(None, 0, faults={"lock": "permission"})
    with pytest.raises(GpuPermissionError, match="injected"):
        gpu.lock_sm_clock(1200)
    gpu.inject_fault("lock", None)
    gpu.lock_sm_clock(1200)
    gpu.inject_fault("power", "not_supported")
    with pytest.raises(GpuNotSupportedError):
        gpu.power_w()
    gpu.inject_fault("energy", "library")
    with pytest.raises(GpuLibraryError):
        gpu.energy_j()
    with pytest.raises(GpuInvalidArgumentError, match="unknown GPU operation"):
        gpu.inject_fault("fly", "permission")
    with pytest.raises(GpuInvalidArgumentError, match="unknown fault kind"):
        gpu.inject_fault("lock", "gremlins")


def test_fault_injected_from_outside_reaches_the_agent(tmp_path: Path) -> None:
    agent, tester = open_simulated_gpus([0, 0], tmp_path)
    tester.inject_fault("lock", "permission")
    tester.inject_fault("reset", "permission")
    with pytest.raises(GpuPermissionError):
        agent.lock_sm_clock(800)
    with pytest.raises(GpuPermissionError):
        agent.reset_sm_clock()
    assert agent.sm_clock_mhz() == 1980  # reading still works
    tester.inject_fault("lock", None)
    agent.lock_sm_clock(800)
    assert tester.sm_clock_mhz() == 800


def test_corrupt_state_is_a_typed_error(tmp_path: Path) -> None:
    gpu = SimulatedGpu(tmp_path, 0)
    (tmp_path / "gpu0.activity.json").write_text("{not json")
    with pytest.raises(GpuLibraryError, match="unreadable"):
        gpu.power_w()
    (tmp_path / "gpu0.activity.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(GpuLibraryError, match="not a wattgate-simgpu-activity"):
        gpu.energy_j()
    with pytest.raises(GpuInvalidArgumentError):
        SimulatedGpu(None, -1)


def test_power_record_expires_when_its_writer_stops_refreshing(tmp_path: Path) -> None:
    clock = FakeTime()
    engine = SimulatedGpu(tmp_path, 0, now_s=clock, idle_power_w=70.0)
    agent = SimulatedGpu(tmp_path, 0, now_s=clock, idle_power_w=70.0)
    engine.set_power_w(500.0, valid_for_s=5.0)
    clock.t += 4
    assert agent.power_w() == 500.0 and agent.energy_j() == pytest.approx(2000.0)
    clock.t += 6  # the engine was killed: 5 s at 500 W, then idle
    assert agent.power_w() == 70.0
    assert agent.energy_j() == pytest.approx(2500.0 + 5 * 70.0)
    engine.set_power_w(300.0, valid_for_s=5.0)  # a new engine takes over: the counter carries on
    clock.t += 1
    assert agent.energy_j() == pytest.approx(2850.0 + 300.0)
