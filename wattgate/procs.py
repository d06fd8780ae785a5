"""Stop a child process: SIGTERM, a grace period, then SIGKILL (to the process or its whole group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0, *, group: bool = False) -> int:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL it and wait up to ``timeout_s`` again.

    With ``group`` the signals go to its process group, so its own children go too: ``proc`` must
    have been started with ``start_new_session=True`` (it leads the group). A process that has
    already exited is only reaped. Returns the exit status; ``subprocess.TimeoutExpired`` only if
    even SIGKILL did not end it in time.
    """
    if proc.poll() is not None:
        return proc.returncode
    _send(proc, signal.SIGTERM, group)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _send(proc, signal.SIGKILL, group)
        return proc.wait(timeout=timeout_s)


def _send(proc: subprocess.Popen[Any], sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited (and its group emptied) meanwhile
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
