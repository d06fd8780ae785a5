"""Instructions the gateway executes per request, counted by callgrind: a measure the machine's load cannot move.

Wall-clock and CPU time per request on a shared 2-core machine swing with the other jobs; the
user-space instruction count of the gateway process does not. This starts the fast fake backend,
runs ``wattgate gateway`` under ``valgrind --tool=callgrind`` with collection off, warms it up,
switches collection on with ``callgrind_control`` around a fixed-rate run (10 req/s, plain then
streamed) and divides the total by the requests. Needs valgrind (Debian: ``apt-get install valgrind``).
Prints a line per mode and one JSON line. Measured, not modelled.

    .venv/bin/python bench/gateway_instructions.py [--requests 60] [--max-tokens 8] [--extra "--classifier max_tokens"]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import ENV, PY, fake_backend, loadgen  # noqa: E402
from tests.support import wait_port  # noqa: E402
from wattgate.embedded_redis import free_port  # noqa: E402


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def count(out_dir: Path, pid: int, tag: str) -> int:
    control("-d", tag, str(pid))
    time.sleep(1.0)
    newest = max(out_dir.glob("cg.out*"), key=lambda p: p.stat().st_mtime)
    found = re.search(r"^totals: (\d+)", newest.read_text(), re.M)
    return int(found.group(1)) if found else -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=60, help="counted requests per mode (plus 20 of warm-up)")
    p.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request; 0 leaves it out")
    p.add_argument("--extra", default="", help="more flags for wattgate gateway, e.g. '--classifier max_tokens'")
    a = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("gateway_instructions: valgrind is not installed (Debian: apt-get install valgrind)")
    out: dict[str, float] = {}
    with fake_backend() as backend, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.out",
            PY, "-m", "wattgate", "gateway", "--backend", f"{backend}#model=fake-model", "--port", str(port),
            "--log-level", "warning", *shlex.split(a.extra),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=ENV, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, timeout_s=600)
            url = f"http://127.0.0.1:{port}"
            for mode in ("plain", "stream"):
                stream = mode == "stream"
                loadgen(url, stream, rate=10, duration_s=1, max_tokens=a.max_tokens)  # warm-up, not counted
                control("-z", str(proc.pid))
                control("-i", "on", str(proc.pid))
                r = loadgen(url, stream, rate=10, duration_s=a.requests / 10, max_tokens=a.max_tokens)
                control("-i", "off", str(proc.pid))
                n = r["n"] + 20  # the load generator's own warm-up requests are inside the window
                out[mode] = count(Path(tmp), proc.pid, mode) / n
                print(f"{mode:7s} {out[mode] / 1e3:8.0f} k instructions/request ({n} requests; measured)")
        finally:
            proc.terminate()
            proc.wait()
    summary = {"bench": "gateway_instructions", "source": "measured", "max_tokens": a.max_tokens or None}
    print(json.dumps({**summary, "extra": a.extra, "instructions_per_request": out}))


if __name__ == "__main__":
    main()
