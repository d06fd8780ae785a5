"""Helpers for tests that load the fake libnvidia-ml.so.1: environment and state-file access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def nvml_env(lib_dir: Path, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env.update(LD_LIBRARY_PATH=str(lib_dir), FAKE_NVML_STATE=str(state), PYTHONPATH=str(ROOT), **extra)
    return env


def write_state(state: Path, gpus: int = 2, deny_lock: bool = False, fail: dict[str, int] | None = None) -> None:
    lines = [f"deny_lock {int(deny_lock)}"]
    lines += [f"fail {name} {code}" for name, code in (fail or {}).items()]
    lines += [f"gpu {i} 0 0 0" for i in range(gpus)]
    tmp = state.with_name(state.name + ".test-tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(state)  # like the library: a reader never sees a half-written file


def locked_clocks(state: Path) -> dict[int, int]:
    """GPU index -> locked MHz (0 = not locked), read from outside the process that holds NVML.

    No lock needed: the library renames a complete new file over the old one on every call."""
    out = {}
    text = state.read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "gpu":
            out[int(parts[1])] = int(parts[2])
    return out


def run_python(code: str, env: dict[str, str]) -> Any:
    """Run ``code`` in a fresh interpreter (LD_LIBRARY_PATH is read at start); it prints JSON."""
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])
