"""scripts/build_profiles.py as a user runs it: clear errors, --check, a rebuild identical to the shipped file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import SHARED_DATA, needs_shared

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_profiles.py"
DATA = SHARED_DATA / "profiles"
SHIPPED = REPO / "wattgate" / "profiles" / "data" / "llama-2-70b-h100.json"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def test_missing_source_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = _run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out.json"))
    assert result.returncode == 2
    assert "error: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()


@needs_shared("profiles")
def test_rebuild_writes_the_shipped_bytes_and_check_spots_a_difference(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert _run(str(DATA), "--out", str(out)).returncode == 0
    assert out.read_bytes() == SHIPPED.read_bytes()
    assert _run(str(DATA), "--out", str(out), "--check").returncode == 0
    out.write_text(out.read_text().replace('"llama-2-70b"', '"other"', 1))
    result = _run(str(DATA), "--out", str(out), "--check")
    assert result.returncode == 1
    assert "DIFFERS" in result.stdout
