"""The real pynvml code path against the fake libnvidia-ml.so.1 (in a subprocess), and read-only
checks on a real GPU (marked gpu, skipped without one)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from tests.agent.agent_support import fake_nvml_fixture  # noqa: F401 (the fake_nvml_dir fixture)
from tests.agent.nvml_support import locked_clocks, nvml_env, run_python, write_state
from wattgate.agent.gpu.base import GpuError, GpuNotSupportedError
from wattgate.agent.gpu.nvml import NvmlLibrary

PRELUDE = """
import json, time
from wattgate.agent.gpu.nvml import NvmlLibrary
from wattgate.agent.gpu import base
lib = NvmlLibrary(); gpus = lib.gpus()
def attempt(fn, *a):
    try:
        fn(*a); return "ok"
    except base.GpuError as exc:
        return type(exc).__name__
"""


def run(code: str, lib: Path, state: Path) -> dict:
    return run_python(PRELUDE + textwrap.dedent(code), nvml_env(lib, state))


def test_reads_identity_power_energy_and_clocks(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml"
    write_state(state, gpus=3)
    out = run(
        """
        g = gpus[1]
        e0 = g.energy_j(); time.sleep(0.2); e1 = g.energy_j()
        print(json.dumps({"n": len(gpus), "uuid": g.uuid, "name": g.name, "power": g.power_w(), "e0": e0, "e1": e1,
                          "clock": g.sm_clock_mhz(), "clocks": g.supported_sm_clocks_mhz(), "source": g.source}))
        """,
        fake_nvml_dir,
        state,
    )
    assert out["n"] == 3
    assert out["uuid"] == "GPU-fa4e0000-0000-0000-0000-000000000001"
    assert out["name"] == "Fake NVIDIA H100 80GB HBM3"
    assert out["power"] == pytest.approx(700.0)  # 700000 mW -> W
    assert out["e1"] - out["e0"] == pytest.approx(700 * 0.2, rel=0.5)  # mJ -> J, integrates power
    assert out["clock"] == 1980
    assert out["clocks"][0] == 210 and out["clocks"][-1] == 1980 and out["clocks"] == sorted(out["clocks"])
    assert out["source"] == "measured"


def test_lock_and_reset_are_visible_outside(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml"
    write_state(state)
    out = run(
        """
        gpus[0].lock_sm_clock(1200)
        print(json.dumps({"clock": gpus[0].sm_clock_mhz(), "power": gpus[0].power_w()}))
        """,
        fake_nvml_dir,
        state,
    )
    assert out["clock"] == 1200 and out["power"] < 300
    assert locked_clocks(state) == {0: 1200, 1: 0}
    run("gpus[0].reset_sm_clock(); print(json.dumps({}))", fake_nvml_dir, state)
    assert locked_clocks(state) == {0: 0, 1: 0}


def test_errors_map_through_one_table(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml"
    write_state(state, deny_lock=True, fail={"nvmlDeviceGetPowerUsage": 3, "nvmlDeviceGetTotalEnergyConsumption": 15})
    out = run(
        """
        g = gpus[0]
        print(json.dumps({"unsupported_clock": attempt(g.lock_sm_clock, 1201), "denied": attempt(g.lock_sm_clock, 1200),
                          "reset_denied": attempt(g.reset_sm_clock), "power": attempt(g.power_w),
                          "energy": attempt(g.energy_j)}))
        """,
        fake_nvml_dir,
        state,
    )
    assert out == {
        "unsupported_clock": "GpuInvalidArgumentError",
        "denied": "GpuPermissionError",
        "reset_denied": "GpuPermissionError",
        "power": "GpuNotSupportedError",
        "energy": "GpuError",  # GPU is lost: not in the table, the base error
    }
    assert locked_clocks(state) == {0: 0, 1: 0}


def test_energy_without_a_counter_integrates_measured_power(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml"
    write_state(state, fail={"nvmlDeviceGetTotalEnergyConsumption": 3})  # NOT_SUPPORTED, like pre-Volta
    out = run(
        """
        g = gpus[0]
        e0 = g.energy_j(); time.sleep(0.2); e1 = g.energy_j()
        print(json.dumps({"e0": e0, "e1": e1}))
        """,
        fake_nvml_dir,
        state,
    )
    assert out["e0"] == 0.0
    assert out["e1"] == pytest.approx(700 * 0.2, rel=0.5)


def test_fake_library_itself_refuses_unsupported_clocks(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml"
    write_state(state)
    out = run_python(
        "import json, pynvml as n; n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0)\n"
        "try:\n    n.nvmlDeviceSetGpuLockedClocks(h, 1201, 1201); print(json.dumps('locked'))\n"
        "except n.NVMLError as e:\n    print(json.dumps(e.value))\n",
        nvml_env(fake_nvml_dir, state),
    )
    assert out == 2  # NVML_ERROR_INVALID_ARGUMENT
    assert locked_clocks(state) == {0: 0, 1: 0}


def test_missing_library_is_a_library_error(tmp_path: Path) -> None:
    out = run_python(
        "import json\nfrom wattgate.agent.gpu.nvml import NvmlLibrary\n"
        "from wattgate.agent.gpu.base import GpuLibraryError\n"
        "try:\n    NvmlLibrary().gpus(); print(json.dumps('opened'))\n"
        "except GpuLibraryError as e:\n    print(json.dumps('library error'))\n",
        nvml_env(tmp_path, tmp_path / "none"),
    )
    if out == "opened":
        pytest.skip("a real libnvidia-ml.so.1 is installed on this machine")
    assert out == "library error"


# -- real GPU, read only: never lock or reset a real GPU's clocks in a test ------------------------
@pytest.fixture
def real_gpus():  # type: ignore[no-untyped-def]
    lib = NvmlLibrary()
    try:
        gpus = lib.gpus()
    except GpuError as exc:
        pytest.skip(f"no real NVIDIA GPU: {exc}")
    if not gpus:
        pytest.skip("NVML found no GPU")
    yield gpus
    lib.shutdown()


@pytest.mark.gpu
def test_real_gpu_power_and_clock(real_gpus) -> None:  # type: ignore[no-untyped-def]
    g = real_gpus[0]
    assert g.uuid.startswith(("GPU-", "MIG-")) and g.name
    assert 1.0 < g.power_w() < 2000.0
    clocks = g.supported_sm_clocks_mhz()
    assert clocks == tuple(sorted(clocks)) and len(clocks) > 1
    assert clocks[0] <= g.sm_clock_mhz() <= clocks[-1] + 100


@pytest.mark.gpu
def test_real_gpu_energy_counter_increases(real_gpus) -> None:  # type: ignore[no-untyped-def]
    g = real_gpus[0]
    try:
        e0 = g.energy_j()
    except GpuNotSupportedError:
        pytest.skip("this GPU has no total energy counter (pre-Volta)")
    time.sleep(1.0)
    e1 = g.energy_j()
    assert e1 > e0  # an idle GPU still draws tens of watts
    assert (e1 - e0) < 2000.0
