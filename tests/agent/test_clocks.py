"""The clock controller owns the locks it set and nothing else: it never resets (or locks again) a GPU it did
not lock, remembers every lock in its state file before applying it, and after a crash resets only what the
file names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.agent_support import FakeGpu
from wattgate.agent.clocks import STATE_FORMAT, ClockController, ClockStateError
from wattgate.agent.gpu.base import GpuError, GpuInvalidArgumentError


class CountingGpu(FakeGpu):
    """A FakeGpu that counts every reset, so a reset of a GPU that was never locked shows."""

    def __init__(self, index: int, deny: bool = False) -> None:
        super().__init__(index, deny)
        self.resets = 0

    def reset_sm_clock(self) -> None:
        self.resets += 1
        super().reset_sm_clock()


def gpus(n: int = 3) -> list[CountingGpu]:
    return [CountingGpu(i) for i in range(n)]


def saved(path: Path) -> dict[str, int]:
    doc = json.loads(path.read_text())
    assert doc["format"] == STATE_FORMAT and doc["version"] == 1
    return {uuid: v["mhz"] for uuid, v in doc["locks"].items()}


def test_reset_touches_only_the_gpus_it_locked(tmp_path: Path) -> None:
    g = gpus()
    c = ClockController(g, tmp_path / "locks.json")
    assert c.set_clock(1, 1200) is True
    c.reset(0)  # never locked: not touched (another tool, or the admin, may hold its clock)
    c.reset(2)
    assert [x.resets for x in g] == [0, 0, 0]
    assert c.reset_all() == [1]
    assert [x.resets for x in g] == [0, 1, 0]
    assert c.reset_all() == []  # nothing left to reset: no call at all
    assert [x.resets for x in g] == [0, 1, 0]
    assert saved(tmp_path / "locks.json") == {}


def test_a_lock_is_applied_once_and_recorded_before_it_is_applied(tmp_path: Path) -> None:
    g = gpus(2)
    state = tmp_path / "locks.json"
    seen_in_file: list[dict[str, int]] = []
    real_lock = g[0].lock_sm_clock

    def lock(mhz: int) -> None:
        seen_in_file.append(saved(state))  # what a crash at this instant would leave behind
        real_lock(mhz)

    g[0].lock_sm_clock = lock  # type: ignore[method-assign]
    c = ClockController(g, state)
    assert c.set_clock(0, 1400) is True
    assert seen_in_file == [{"GPU-fake-0": 1400}]
    assert c.set_clock(0, 1400) is False  # already there: no NVML call
    assert g[0].lock_calls == [1400] and c.locked_mhz(0) == 1400 and c.locked_mhz(1) is None
    assert c.set_clock(0, 1600) is True and g[0].lock_calls == [1400, 1600]
    c.reset(0)
    assert g[0].resets == 1 and c.locked_mhz(0) is None and saved(state) == {}


def test_a_failed_lock_is_forgotten_and_raised(tmp_path: Path) -> None:
    g = gpus(1)
    c = ClockController(g, tmp_path / "locks.json")
    with pytest.raises(GpuInvalidArgumentError):
        c.set_clock(0, 1234)  # not a supported clock
    assert c.locked_mhz(0) is None and saved(tmp_path / "locks.json") == {}
    assert c.clock_control  # a bad argument is not a missing privilege


def test_no_privilege_turns_to_observe_only_once_and_touches_nothing(tmp_path: Path) -> None:
    g = [CountingGpu(0, deny=True), CountingGpu(1, deny=True)]
    c = ClockController(g, tmp_path / "locks.json")
    assert c.set_clock(0, 1200) is False
    assert not c.clock_control and len(c.notes) == 1 and "observe-only" in c.notes[0]
    assert c.set_clock(1, 1200) is False and len(c.notes) == 1  # said once
    assert c.reset_all() == [] and [x.resets for x in g] == [0, 0]
    assert saved(tmp_path / "locks.json") == {}
    quiet = ClockController(gpus(1), tmp_path / "other.json", observe_only=True)
    assert quiet.set_clock(0, 1200) is False and not quiet.clock_control


def test_recover_resets_only_what_a_crashed_agent_recorded(tmp_path: Path) -> None:
    state = tmp_path / "locks.json"
    first = gpus()
    crashed = ClockController(first, state)
    crashed.set_clock(0, 1200)
    crashed.set_clock(2, 1600)  # ... and the agent dies: nobody resets them
    after = gpus()
    c = ClockController(after[:2], state)  # GPU 2 is not managed by the new agent (--gpu-indices 0,1)
    assert c.recover() == [0]
    assert [x.resets for x in after] == [1, 0, 0]
    assert saved(state) == {}  # forgotten once reset
    assert ClockController(after, state).recover() == []  # nothing recorded: nothing touched
    assert [x.resets for x in after] == [1, 0, 0]


def test_a_reset_that_fails_is_reported_and_the_others_still_reset(tmp_path: Path) -> None:
    g = gpus(2)
    c = ClockController(g, tmp_path / "locks.json")
    c.set_clock(0, 1200)
    c.set_clock(1, 1200)

    def broken() -> None:
        raise GpuError("lost the GPU")

    g[0].reset_sm_clock = broken  # type: ignore[method-assign]
    assert c.reset_all() == [1]
    assert g[1].resets == 1 and c.locked_mhz(0) is None


def test_an_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "locks.json"
    state.write_text('{"format": "something else"}')
    with pytest.raises(ClockStateError, match="not a wattgate clock state file"):
        ClockController(gpus(1), state).recover()
    state.write_text("{not json")
    with pytest.raises(ClockStateError, match="cannot read"):
        ClockController(gpus(1), state).recover()
    assert ClockController(gpus(1), tmp_path / "absent.json").recover() == []
