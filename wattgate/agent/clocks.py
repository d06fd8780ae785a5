"""Clock locks the agent owns: lock only when the target differs, remember every lock in a state
file (NVML cannot read locks back), reset them on shutdown and at start-up after a crash.

Without the privilege to lock clocks (not root, no CAP_SYS_ADMIN) or on a GPU that cannot lock
them, the controller says so once and turns to observe-only mode: every later request is a no-op
and ``clock_control`` is False, which the heartbeat reports.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from wattgate.agent.errors import AgentError
from wattgate.agent.gpu.base import Gpu, GpuError, GpuNotSupportedError, GpuPermissionError

log = logging.getLogger(__name__)
STATE_FORMAT = "wattgate-agent-clock-locks"


class ClockStateError(AgentError):
    """The clock state file cannot be read or written."""


class ClockController:
    """Owns every clock lock the agent sets on ``gpus``; the state file is the memory of them."""

    def __init__(self, gpus: Sequence[Gpu], state_file: Path, observe_only: bool = False) -> None:
        self._gpus = {g.index: g for g in gpus}
        self._state_file = state_file
        self._locked: dict[int, int] = {}  # GPU index -> MHz we locked it at
        self._control = not observe_only
        self.notes: list[str] = ["observe-only: clock control disabled by settings"] if observe_only else []

    @property
    def clock_control(self) -> bool:
        return self._control

    def locked_mhz(self, index: int) -> int | None:
        return self._locked.get(index)

    def recover(self) -> list[int]:
        """At start-up: reset the GPUs a previous (crashed) agent left locked. Returns their indices."""
        entries = self._read_state()
        if not entries:
            return []
        by_uuid = {g.uuid: g for g in self._gpus.values()}
        reset: list[int] = []
        for uuid, mhz in entries.items():
            gpu = by_uuid.get(uuid)
            if gpu is None:
                log.warning("clock state names GPU %s (locked at %s MHz), which this agent does not manage", uuid, mhz)
                continue
            try:
                gpu.reset_sm_clock()
                reset.append(gpu.index)
                log.warning("reset GPU %d (%s): a previous agent left it locked at %s MHz", gpu.index, uuid, mhz)
            except GpuError as exc:
                log.error("cannot reset GPU %d left locked at %s MHz by a previous agent: %s", gpu.index, mhz, exc)
        self._write_state()
        return reset

    def set_clock(self, index: int, mhz: int) -> bool:
        """Lock GPU ``index`` at ``mhz`` unless it already is. True when a lock was applied now."""
        if not self._control or self._locked.get(index) == mhz:
            return False
        gpu = self._gpus[index]
        # Record before locking: if we die between the two, start-up resets a GPU that may be unlocked
        # (harmless) rather than leaving one locked that nobody remembers.
        self._locked[index] = mhz
        self._write_state()
        try:
            gpu.lock_sm_clock(mhz)
        except (GpuPermissionError, GpuNotSupportedError) as exc:
            del self._locked[index]
            self._write_state()
            self._go_observe_only(f"cannot lock SM clocks ({exc}): observe-only mode, clocks stay as they are")
            return False
        except GpuError:
            self._forget(index)
            raise
        return True

    def reset(self, index: int) -> None:
        if index not in self._locked:
            return
        try:
            self._gpus[index].reset_sm_clock()
        finally:
            self._forget(index)

    def reset_all(self) -> list[int]:
        """Reset every GPU this agent locked (shutdown, SIGTERM, lost plan). Returns their indices."""
        done = []
        for index in sorted(self._locked):
            try:
                self.reset(index)
                done.append(index)
            except GpuError as exc:
                log.error("cannot reset GPU %d: %s", index, exc)
        return done

    def _forget(self, index: int) -> None:
        self._locked.pop(index, None)
        self._write_state()

    def _go_observe_only(self, why: str) -> None:
        if self._control:
            self._control = False
            self.notes.append(why)
            log.warning("%s", why)

    def _read_state(self) -> dict[str, int]:
        try:
            doc = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClockStateError(f"cannot read clock state file {self._state_file}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or not isinstance(doc.get("locks"), dict):
            raise ClockStateError(f"{self._state_file} is not a wattgate clock state file")
        return {str(k): int(v["mhz"]) for k, v in doc["locks"].items()}

    def _write_state(self) -> None:
        locks = {self._gpus[i].uuid: {"index": i, "mhz": m} for i, m in self._locked.items()}
        doc = {"format": STATE_FORMAT, "version": 1, "locks": locks}
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_file)
        except OSError as exc:
            raise ClockStateError(f"cannot write clock state file {self._state_file}: {exc}") from exc
