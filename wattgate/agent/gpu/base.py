"""The GPU Protocol and its typed errors: what the agent needs from a GPU, NVML or simulated.

Exception tree::

    GpuError                    base of every GPU failure
    ├── GpuPermissionError      no privilege for this call (clock locking without root/CAP_SYS_ADMIN)
    ├── GpuNotSupportedError    the device or driver does not support this call
    ├── GpuLibraryError         the library (libnvidia-ml) is missing or failed to initialise
    └── GpuInvalidArgumentError a clock or index the device refuses
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class GpuError(Exception):
    """Base exception of the GPU seam."""


class GpuPermissionError(GpuError):
    pass


class GpuNotSupportedError(GpuError):
    pass


class GpuLibraryError(GpuError):
    pass


class GpuInvalidArgumentError(GpuError):
    pass


@runtime_checkable
class Gpu(Protocol):
    """One GPU. Power and energy are measured for NVML, modelled for simulated GPUs (see ``source``)."""

    @property
    def index(self) -> int: ...

    @property
    def uuid(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str:
        """``measured`` or ``modelled`` (wattgate.planner.contract.Source values)."""
        ...

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """Supported graphics clocks for the current memory clock, ascending."""
        ...

    def sm_clock_mhz(self) -> int: ...

    def lock_sm_clock(self, mhz: int) -> None:
        """Lock the SM clock to ``mhz`` (min = max). Raises GpuPermissionError without privilege."""
        ...

    def reset_sm_clock(self) -> None: ...

    def power_w(self) -> float: ...

    def energy_j(self) -> float:
        """Total energy counter since some fixed origin (driver load), joules."""
        ...
