"""The NVML GPU: the only module that imports ``pynvml`` (the official ``nvidia-ml-py`` bindings).

Every NVML error becomes one of the typed errors of ``wattgate.agent.gpu.base`` through one
table, ``_ERRORS``. Power and energy read here are measured (NVML counters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from wattgate.agent.gpu.base import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLibraryError,
    GpuNotSupportedError,
    GpuPermissionError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# NVML return code -> our error. Codes not listed become the base GpuError.
_ERRORS: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_NO_PERMISSION: GpuPermissionError,
    pynvml.NVML_ERROR_NOT_SUPPORTED: GpuNotSupportedError,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: GpuNotSupportedError,
    pynvml.NVML_ERROR_INVALID_ARGUMENT: GpuInvalidArgumentError,
    pynvml.NVML_ERROR_NOT_FOUND: GpuInvalidArgumentError,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: GpuLibraryError,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: GpuLibraryError,
    pynvml.NVML_ERROR_UNINITIALIZED: GpuLibraryError,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: GpuLibraryError,
}


def _call(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one NVML call, translating its error through ``_ERRORS``."""
    try:
        return fn(*args)
    except pynvml.NVMLError as exc:
        code = int(getattr(exc, "value", -1))
        raise _ERRORS.get(code, GpuError)(f"NVML {what}: {exc} (code {code})") from exc


class NvmlGpu:
    """One physical GPU behind NVML. Build through ``NvmlLibrary.gpus()``."""

    def __init__(self, index: int, handle: Any) -> None:
        self._index = index
        self._handle = handle
        self._uuid = str(_call("uuid", pynvml.nvmlDeviceGetUUID, handle))
        self._name = str(_call("name", pynvml.nvmlDeviceGetName, handle))
        self._clocks: tuple[int, ...] | None = None
        self._energy_counter = True
        self._integrated_j = 0.0
        self._last_power: tuple[float, float] | None = None

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str:
        return "measured"

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        if self._clocks is None:
            mem = _call("memory clock", pynvml.nvmlDeviceGetClockInfo, self._handle, pynvml.NVML_CLOCK_MEM)
            clocks = _call("supported clocks", pynvml.nvmlDeviceGetSupportedGraphicsClocks, self._handle, mem)
            self._clocks = tuple(sorted({int(c) for c in clocks}))
        return self._clocks

    def sm_clock_mhz(self) -> int:
        return int(_call("SM clock", pynvml.nvmlDeviceGetClockInfo, self._handle, pynvml.NVML_CLOCK_SM))

    def lock_sm_clock(self, mhz: int) -> None:
        if mhz not in self.supported_sm_clocks_mhz():
            raise GpuInvalidArgumentError(f"GPU {self._index}: {mhz} MHz is not a supported graphics clock")
        _call("lock clocks", pynvml.nvmlDeviceSetGpuLockedClocks, self._handle, mhz, mhz)

    def reset_sm_clock(self) -> None:
        _call("reset clocks", pynvml.nvmlDeviceResetGpuLockedClocks, self._handle)

    def power_w(self) -> float:
        return float(_call("power", pynvml.nvmlDeviceGetPowerUsage, self._handle)) / 1000.0  # mW -> W

    def energy_j(self) -> float:
        """The driver's total energy counter (mJ -> J). GPUs without one (before Volta) skip the call:
        the energy is then integrated from measured power at each call (trapezoids), from zero."""
        if self._energy_counter:
            try:
                return float(_call("energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)) / 1000.0
            except GpuNotSupportedError:
                self._energy_counter = False
                log.warning("GPU %d has no energy counter: integrating measured power instead", self._index)
        now, power = time.monotonic(), self.power_w()
        if self._last_power is not None:
            t0, p0 = self._last_power
            self._integrated_j += (power + p0) / 2 * (now - t0)
        self._last_power = (now, power)
        return self._integrated_j


class NvmlLibrary:
    """NVML initialised once for the process; ``shutdown()`` when done (or use ``with``)."""

    def __init__(self) -> None:
        self._open = False

    def __enter__(self) -> NvmlLibrary:
        self.init()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def init(self) -> None:
        if not self._open:
            _call("init", pynvml.nvmlInit)
            self._open = True

    def gpus(self, indices: list[int] | None = None) -> list[NvmlGpu]:
        """The node's GPUs (or those of ``indices``), in index order."""
        self.init()
        count = int(_call("device count", pynvml.nvmlDeviceGetCount))
        wanted = list(range(count)) if indices is None else indices
        for i in wanted:
            if not 0 <= i < count:
                raise GpuInvalidArgumentError(f"GPU index {i} does not exist (this node has {count} GPUs)")
        return [NvmlGpu(i, _call("handle", pynvml.nvmlDeviceGetHandleByIndex, i)) for i in wanted]

    def shutdown(self) -> None:
        if self._open:
            self._open = False
            try:
                _call("shutdown", pynvml.nvmlShutdown)
            except GpuError as exc:  # shutting down anyway
                log.warning("NVML shutdown failed: %s", exc)
