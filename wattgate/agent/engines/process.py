"""Process supervision shared by the managed engines (vLLM, TGI, llama.cpp, simulated): launch in its own
process group, health over HTTP, drain by watching /metrics, SIGTERM then SIGKILL, adopt a
process a previous agent left running."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from wattgate.agent.engines.base import EngineError, EngineKind, EngineSpec
from wattgate.agent.engines.http_engine import HttpEngine
from wattgate.agent.engines.options import EngineOptions

log = logging.getLogger(__name__)
_ERROR_WORDS = re.compile(r"error|fail|fatal|exception|cannot|can't|unable|no such|invalid|traceback", re.IGNORECASE)


class ProcessEngine(HttpEngine):
    """A managed engine: a child process serving HTTP on ``spec.port``. Subclasses give the command."""

    kind_value = EngineKind.SIMULATED
    managed_value = True
    default_command: tuple[str, ...] = ()

    def __init__(
        self, spec: EngineSpec, options: EngineOptions, sleep_fn: Callable[[float], None] = time.sleep
    ) -> None:
        super().__init__(spec, spec.base_url)
        self.options = options
        self._log_dir = options.log_dir
        self._grace_s = options.stop_grace_s
        self._sleep = sleep_fn
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None

    # -- what subclasses provide ------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def launcher(self) -> list[str]:
        return list(self.options.command or self.default_command)

    def environment(self) -> dict[str, str]:
        s = self._spec
        names = s.gpu_uuids if self.options.cuda_devices_by == "uuid" and s.gpu_uuids else tuple(map(str, s.gpus))
        return {"CUDA_VISIBLE_DEVICES": ",".join(names), **self.options.env}

    # -- Engine protocol (the rest is HttpEngine's) ------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._adopted_pid

    def start(self) -> None:
        if self.running():
            return
        cmd = self.command()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self._log_dir / f"{self._spec.instance_id}.log", "ab")  # noqa: SIM115 (the child owns it)
        try:
            self._proc = subprocess.Popen(
                cmd,
                env={**os.environ, **self.environment()},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() reaches its workers too
            )
        except OSError as exc:
            raise EngineError(f"{self._spec.instance_id}: cannot run {cmd[0]!r}: {exc}") from exc
        finally:
            out.close()
        self._adopted_pid = None
        log.info("started %s (%s) pid %d: %s", self._spec.instance_id, self.kind, self._proc.pid, " ".join(cmd))

    def adopt(self, pid: int) -> None:
        """Take over a process a previous agent started (it is not our child)."""
        self._adopted_pid = pid

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._adopted_pid is None:
            return False
        try:
            os.kill(self._adopted_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def exit_reason(self) -> str:
        """Why the process ended, in a line: its exit status and the error lines at the end of its log
        (e.g. llama-server's ``failed to open GGUF file``), so the heartbeat can say it."""
        code = self.exit_code()
        if code is not None and code < 0:
            status = f"killed by {signal.Signals(-code).name}"
        else:
            status = f"exit status {code}" if code is not None else "exited"
        lines = _log_tail(self._log_dir / f"{self._spec.instance_id}.log")
        errors = [line for line in lines if _ERROR_WORDS.search(line)]
        picked = errors[-2:] if errors or (code is not None and code < 0) else lines[-1:]
        return f"{status}: {' | '.join(picked)}" if picked else status

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight or ``timeout_s`` passes. True when drained."""
        deadline = time.monotonic() + timeout_s
        while self.running():
            n = self.in_flight()
            if n == 0:
                return True
            if time.monotonic() >= deadline:
                log.warning("%s: %s requests still in flight after %.0f s drain", self._spec.instance_id, n, timeout_s)
                return False
            self._sleep(0.2)
        return True

    def stop(self, drain_timeout_s: float) -> None:
        if drain_timeout_s > 0:
            self.drain(drain_timeout_s)
        self.terminate()

    def terminate(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period."""
        pid = self.pid
        if pid is None or not self.running():
            self._reap()
            return
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s
        while self.running() and time.monotonic() < deadline:
            self._sleep(0.05)
        if self.running():
            log.warning("%s did not exit within %.0f s of SIGTERM: SIGKILL", self._spec.instance_id, self._grace_s)
            self._signal(pid, signal.SIGKILL)
            end = time.monotonic() + 5
            while self.running() and time.monotonic() < end:
                self._sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                return
        self._proc = None
        self._adopted_pid = None

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # pid is the group leader (start_new_session)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)


def _log_tail(path: Path, max_bytes: int = 4096) -> list[str]:
    """The non-empty lines of the last ``max_bytes`` of a log file (none if it cannot be read)."""
    try:
        with path.open("rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - max_bytes)
            f.seek(start)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    if start:
        lines = lines[1:]  # the first may be cut
    return [" ".join(line.split())[:300] for line in lines if line.strip()]
