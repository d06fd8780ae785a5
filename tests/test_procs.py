"""``stop_process``: SIGTERM first, SIGKILL after the grace period, the whole group when asked."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from wattgate.procs import stop_process

# Prints "ready" once its SIGTERM handler is set (ignoring it when argv[1] == "ignore"), then waits.
CHILD = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""

# Ignores SIGTERM and starts a child that ignores it too; prints the child's pid, then waits.
PARENT = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}, "ignore"], stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


def _start(code: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # the handler is in place
    return proc


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_process_that_honours_sigterm_ends_by_sigterm() -> None:
    proc = _start(CHILD, "obey")
    assert stop_process(proc, timeout_s=30) == -signal.SIGTERM
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    proc = _start(CHILD, "ignore")
    assert stop_process(proc, timeout_s=0.5) == -signal.SIGKILL
    assert proc.stdout is not None
    proc.stdout.close()


def test_an_exited_process_is_only_reaped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert stop_process(proc) == 3


def test_group_reaches_the_children_too() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert _alive(child)
    assert stop_process(proc, timeout_s=0.5, group=True) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # the signal is sent; its delivery is not awaited
        time.sleep(0.02)
    assert not _alive(child)
    proc.stdout.close()
