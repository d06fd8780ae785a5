"""A deterministic simulated GPU: the GPU seam for machines without one, shared by the agent and sim-backend.

Power and energy are *modelled* (``source == "modelled"``): the emulated engine that owns the GPU
(sim-backend, the serving model) writes its modelled power here, so that the counter follows its energy.

Sharing between processes. With ``state_dir`` set, every process that builds
``SimulatedGpu(state_dir, index)`` for the same index sees the same GPU. Each GPU has two JSON
files, each with exactly one writer, so no update is ever lost to a concurrent read-modify-write;
every write goes to a temporary file in the same directory and is renamed over the old one
(atomic on POSIX), so a reader sees the old or the new document, never half of one::

    gpu{index}.control.json   written by the clock owner (the agent), and by fault injection in tests
        {"format": "wattgate-simgpu-control", "version": 1, "index": 0,
         "locked_sm_clock_mhz": 1200 | null,            # null = reset (runs at the top clock)
         "faults": {"lock": "permission", "power": "library", ...}}   # optional injection
    gpu{index}.activity.json  written by the engine that runs on the GPU (sim-backend)
        {"format": "wattgate-simgpu-activity", "version": 1, "index": 0,
         "power_w": 412.5, "energy_j": 81234.0, "at_unix_s": 1763791234.25,
         "valid_until_unix_s": 1763791239.25 | null, "writer": "sim-backend pid 42"}

``energy_j`` is the counter at ``at_unix_s``; the power stays ``power_w`` until the next write, so a
reader extrapolates ``energy_j + power_w * (now - at_unix_s)``. A writer that refreshes its record
(sim-backend does every 0.5 s) sets ``valid_until_unix_s``: past it the GPU reads as idle, so an
engine killed with SIGKILL does not leave its power behind forever. Without an activity file the GPU
idles at ``idle_power_w`` from the moment the first object for it was built (that object writes the
initial activity file only if none exists). Times are wall-clock (``time.time``, injectable): the
GPU never compresses time, even when the engine runs with ``--speed``.

Fault injection: ``faults`` maps an operation (``lock``, ``reset``, ``clocks``, ``power``,
``energy``) to an error kind (``permission``, ``not_supported``, ``library``, ``invalid``); the
call then raises the matching error of ``wattgate.agent.gpu.base``. ``inject_fault`` writes it to
the control file, so a test can make the agent's GPU fail from outside the agent.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from wattgate.agent.gpu.base import (
    GpuError,
    GpuInvalidArgumentError,
    GpuLibraryError,
    GpuNotSupportedError,
    GpuPermissionError,
)

CONTROL_FORMAT = "wattgate-simgpu-control"
ACTIVITY_FORMAT = "wattgate-simgpu-activity"
STATE_VERSION = 1
# H100 SXM graphics clocks come in 15 MHz steps; the clocks the shipped profiles measured
# (DynamoLLM's 800, 1000, ... 1600 MHz) are added so every profile clock can be locked.
H100_SM_CLOCKS_MHZ: tuple[int, ...] = tuple(sorted(set(range(210, 1981, 15)) | {800, 1000, 1200, 1400, 1600}))
H100_IDLE_POWER_W = 70.0  # an idle H100 SXM with a model loaded draws roughly 60-90 W
FAULT_KINDS: dict[str, type[GpuError]] = {
    "permission": GpuPermissionError,
    "not_supported": GpuNotSupportedError,
    "library": GpuLibraryError,
    "invalid": GpuInvalidArgumentError,
}
FAULT_OPS = ("lock", "reset", "clocks", "power", "energy")


def _write_json_atomic(path: Path, doc: Mapping[str, Any], *, exclusive: bool = False) -> bool:
    """Write ``doc`` to ``path`` via a temporary file and a rename; with ``exclusive``, only if absent."""
    try:
        return _write_atomic(path, doc, exclusive)
    except OSError as exc:
        raise GpuLibraryError(f"cannot write simulated GPU state {path}: {exc}") from exc


def _write_atomic(path: Path, doc: Mapping[str, Any], exclusive: bool) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        if exclusive:
            try:
                os.link(tmp, path)  # fails if it exists: create-if-absent without a race
            except FileExistsError:
                return False
            return True
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_json(path: Path, fmt: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GpuLibraryError(f"simulated GPU state {path} is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != STATE_VERSION:
        raise GpuLibraryError(f"simulated GPU state {path} is not a {fmt} v{STATE_VERSION} document")
    return doc


class SimulatedGpu:
    """One simulated GPU (see the module docstring for the shared state and fault injection)."""

    def __init__(
        self,
        state_dir: str | Path | None,
        index: int,
        *,
        clocks_mhz: Iterable[int] = H100_SM_CLOCKS_MHZ,
        idle_power_w: float = H100_IDLE_POWER_W,
        name: str = "NVIDIA H100 80GB HBM3 (simulated)",
        now_s: Callable[[], float] = time.time,
        faults: Mapping[str, str] | None = None,
        writer: str = "",
    ) -> None:
        if index < 0:
            raise GpuInvalidArgumentError(f"GPU index must be >= 0, got {index}")
        self._index = index
        self._clocks = tuple(sorted(set(clocks_mhz)))
        if not self._clocks:
            raise GpuInvalidArgumentError("a simulated GPU needs at least one supported clock")
        self._idle_power_w = float(idle_power_w)
        self._name = name
        self._now_s = now_s
        self._writer = writer or f"pid {os.getpid()}"
        self._lock = threading.Lock()
        self._dir = Path(state_dir) if state_dir is not None else None
        # In-memory state; with a state directory the files are the truth and these are unused.
        self._locked: int | None = None
        self._faults: dict[str, str] = {}
        self._activity: dict[str, Any] = {"power_w": self._idle_power_w, "energy_j": 0.0, "at_unix_s": now_s()}
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(self._activity_path, self._activity_doc(self._activity), exclusive=True)
        for op, kind in (faults or {}).items():
            self.inject_fault(op, kind)

    # -- identity --------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return f"GPU-5140{self._index:04d}-0000-4000-8000-000000000000"

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str:
        return "modelled"

    @property
    def idle_power_w(self) -> float:
        return self._idle_power_w

    # -- clocks ----------------------------------------------------------------------------
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        self._check("clocks")
        return self._clocks

    def sm_clock_mhz(self) -> int:
        self._check("clocks")
        locked = self.locked_sm_clock_mhz()
        return self._clocks[-1] if locked is None else locked

    def locked_sm_clock_mhz(self) -> int | None:
        """The locked clock, or None when the clock is not locked (the GPU then runs at its top clock)."""
        if self._dir is None:
            return self._locked
        doc = _read_json(self._control_path, CONTROL_FORMAT) or {}
        value = doc.get("locked_sm_clock_mhz")
        return value if isinstance(value, int) else None

    def lock_sm_clock(self, mhz: int) -> None:
        self._check("lock")
        if mhz not in self._clocks:
            raise GpuInvalidArgumentError(
                f"{mhz} MHz is not a supported SM clock of simulated GPU {self._index} "
                f"({self._clocks[0]}..{self._clocks[-1]} MHz)"
            )
        self._set_control(locked=mhz)

    def reset_sm_clock(self) -> None:
        self._check("reset")
        self._set_control(locked=None)

    # -- power and energy ------------------------------------------------------------------
    def power_w(self) -> float:
        self._check("power")
        act = self._read_activity()
        until = act.get("valid_until_unix_s")
        if isinstance(until, (int, float)) and self._now_s() > until:
            return self._idle_power_w
        return float(act["power_w"])

    def energy_j(self) -> float:
        self._check("energy")
        return self._energy_at(self._read_activity(), self._now_s())

    def _energy_at(self, act: Mapping[str, Any], now: float) -> float:
        at, power = float(act["at_unix_s"]), float(act["power_w"])
        until = act.get("valid_until_unix_s")
        if not isinstance(until, (int, float)) or now <= until:
            return float(act["energy_j"]) + power * max(0.0, now - at)
        return float(act["energy_j"]) + power * max(0.0, until - at) + self._idle_power_w * (now - max(until, at))

    def set_power_w(self, power_w: float, *, valid_for_s: float | None = None) -> None:
        """Engine side: from now on the GPU draws ``power_w`` (for ``valid_for_s`` if given, then idle)."""
        if not power_w >= 0:
            raise GpuInvalidArgumentError(f"power must be >= 0 W, got {power_w!r}")
        with self._lock:
            now = self._now_s()
            energy = self._energy_at(self._read_activity(), now)
            until = None if valid_for_s is None else now + valid_for_s
            new = {"power_w": float(power_w), "energy_j": energy, "at_unix_s": now, "valid_until_unix_s": until}
            if self._dir is None:
                self._activity = new
            else:
                _write_json_atomic(self._activity_path, self._activity_doc(new))

    def set_idle(self) -> None:
        self.set_power_w(self._idle_power_w)

    # -- fault injection -------------------------------------------------------------------
    def inject_fault(self, op: str, kind: str | None) -> None:
        """Make ``op`` raise the error ``kind`` (None clears it); shared through the control file."""
        if op not in FAULT_OPS:
            raise GpuInvalidArgumentError(f"unknown GPU operation {op!r}; expected one of {FAULT_OPS}")
        if kind is not None and kind not in FAULT_KINDS:
            raise GpuInvalidArgumentError(f"unknown fault kind {kind!r}; expected one of {tuple(FAULT_KINDS)}")
        faults = dict(self._current_faults())
        if kind is None:
            faults.pop(op, None)
        else:
            faults[op] = kind
        self._set_control(faults=faults)

    # -- internals -------------------------------------------------------------------------
    @property
    def _control_path(self) -> Path:
        assert self._dir is not None
        return self._dir / f"gpu{self._index}.control.json"

    @property
    def _activity_path(self) -> Path:
        assert self._dir is not None
        return self._dir / f"gpu{self._index}.activity.json"

    def _current_faults(self) -> dict[str, str]:
        if self._dir is None:
            return self._faults
        doc = _read_json(self._control_path, CONTROL_FORMAT) or {}
        faults = doc.get("faults")
        return {str(k): str(v) for k, v in faults.items()} if isinstance(faults, dict) else {}

    def _check(self, op: str) -> None:
        kind = self._current_faults().get(op)
        if kind is not None:
            error = FAULT_KINDS.get(kind, GpuLibraryError)
            raise error(f"simulated GPU {self._index}: injected {kind} fault on {op}")

    _UNSET: Any = object()

    def _set_control(self, *, locked: Any = _UNSET, faults: dict[str, str] | None = None) -> None:
        with self._lock:
            if self._dir is None:
                if locked is not self._UNSET:
                    self._locked = locked
                if faults is not None:
                    self._faults = faults
                return
            doc = _read_json(self._control_path, CONTROL_FORMAT) or {}
            new = {
                "format": CONTROL_FORMAT,
                "version": STATE_VERSION,
                "index": self._index,
                "locked_sm_clock_mhz": doc.get("locked_sm_clock_mhz") if locked is self._UNSET else locked,
                "faults": doc.get("faults", {}) if faults is None else faults,
            }
            _write_json_atomic(self._control_path, new)

    def _read_activity(self) -> dict[str, Any]:
        if self._dir is None:
            return dict(self._activity)
        doc = _read_json(self._activity_path, ACTIVITY_FORMAT)
        if doc is None:  # removed under us: start a fresh counter at idle
            doc = self._activity_doc(self._activity)
            _write_json_atomic(self._activity_path, doc, exclusive=True)
        for key in ("power_w", "energy_j", "at_unix_s"):
            if not isinstance(doc.get(key), (int, float)):
                raise GpuLibraryError(f"simulated GPU state {self._activity_path} lacks a number {key!r}")
        return doc

    def _activity_doc(self, act: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": ACTIVITY_FORMAT,
            "version": STATE_VERSION,
            "index": self._index,
            **act,
            "writer": self._writer,
        }


def open_simulated_gpus(
    indices: Iterable[int], state_dir: str | Path | None = None, **kwargs: Any
) -> tuple[SimulatedGpu, ...]:
    """Build one ``SimulatedGpu`` per index, all sharing ``state_dir`` (or each private in memory)."""
    return tuple(SimulatedGpu(state_dir, i, **kwargs) for i in indices)
