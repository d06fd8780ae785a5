"""Agent test support: the fake libnvidia-ml.so.1 fixture (built once with gcc against the real nvml.h),
a stand-in engine server, a small in-memory GPU implementing the Gpu Protocol, and an Actuator on them."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wattgate.agent.actuator import Actuator, Timeouts
from wattgate.agent.clocks import ClockController
from wattgate.agent.engines.options import EngineOptions, make_engine
from wattgate.agent.gpu.base import GpuInvalidArgumentError, GpuPermissionError
from wattgate.agent.store import AgentStore
from wattgate.embedded_redis import free_port

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FAKE_NVML_C = HERE / "fake_nvml" / "fake_nvml.c"
STANDIN = HERE / "standin_engine.py"
FAKE_VLLM = HERE / "fake_vllm.py"


def nvml_header_dir() -> Path:
    """The include directory of the nvidia-nvml-dev wheel (nvidia/<cuda>/include/nvml.h)."""
    spec = importlib.util.find_spec("nvidia")
    for base in spec.submodule_search_locations if spec and spec.submodule_search_locations else []:
        for header in sorted(Path(base).glob("*/include/nvml.h")):
            return header.parent
    raise FileNotFoundError("nvml.h not found: install the dev extra (nvidia-nvml-dev)")


@pytest.fixture(scope="session", name="fake_nvml_dir")
def fake_nvml_fixture() -> Path:
    """A directory holding the fake libnvidia-ml.so.1, cached under .cache/ by source hash."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the fake libnvidia-ml.so.1")
    include = nvml_header_dir()
    digest = hashlib.sha256(FAKE_NVML_C.read_bytes() + (include / "nvml.h").read_bytes()).hexdigest()[:16]
    out = ROOT / ".cache" / "fake_nvml" / digest
    lib = out / "libnvidia-ml.so.1"
    if not lib.exists():
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "libnvidia-ml.so.1.tmp"
        cmd = [gcc, "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{include}", "-o", str(tmp), str(FAKE_NVML_C)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tmp.rename(lib)
    return out


def standin_command() -> tuple[str, ...]:
    return (sys.executable, str(STANDIN))


def fake_vllm_command() -> tuple[str, ...]:
    """Replaces ``vllm serve``: the fake takes the same command line (see ``fake_vllm.py``)."""
    return (sys.executable, str(FAKE_VLLM))


class FakeGpu:
    """A GPU in memory: power follows the locked clock; can deny locking."""

    def __init__(self, index: int, deny: bool = False) -> None:
        self._index = index
        self.deny = deny
        self.locked: int | None = None
        self.lock_calls: list[int] = []
        self.energy = 0.0

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return f"GPU-fake-{self._index}"

    @property
    def name(self) -> str:
        return "FakeGpu"

    @property
    def source(self) -> str:
        return "modelled"

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return (*range(800, 2000, 200), 1980)

    def sm_clock_mhz(self) -> int:
        return self.locked or 1980

    def lock_sm_clock(self, mhz: int) -> None:
        if self.deny:
            raise GpuPermissionError("no permission")
        if mhz not in self.supported_sm_clocks_mhz():
            raise GpuInvalidArgumentError(f"{mhz}")
        self.lock_calls.append(mhz)
        self.locked = mhz

    def reset_sm_clock(self) -> None:
        if self.deny:
            raise GpuPermissionError("no permission")
        self.locked = None

    def power_w(self) -> float:
        return 100.0 + self.sm_clock_mhz() / 10

    def energy_j(self) -> float:
        self.energy += 1.0
        return self.energy


def actuator(
    tmp: Path,
    gpus: list[FakeGpu],
    opts: EngineOptions,
    *,
    clocks: ClockController | None = None,
    store: AgentStore | None = None,
    timeouts: Timeouts | None = None,
) -> Actuator:
    """Node ``n1`` serving model ``m`` on ``gpus``: ``opts`` engines on free ports, state files in ``tmp``."""
    return Actuator(
        node="n1",
        model="m",
        gpus=gpus,
        clocks=clocks or ClockController(gpus, tmp / "locks.json"),
        store=store,
        make_engine=lambda s: make_engine(opts, s),
        engines_file=tmp / "engines.json",
        port_base=free_port(),
        timeouts=timeouts,
    )
