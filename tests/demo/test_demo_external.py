"""``wattgate demo --external``: the engines start up front and are registered as servers wattgate does not
manage; the planner gives them pools and clocks, the agents lock the clocks and release them at the end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wattgate.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_external_serves_through_the_users_engines_and_releases_their_clocks(tmp_path: Path) -> None:
    report, run = tmp_path / "report.json", tmp_path / "run"
    args = [sys.executable, "-m", "wattgate", "demo", "--external", "--duration-s", "15", "--speed", "4"]
    args += ["--port", str(free_port()), "--load-fraction", "1", "--max-output-tokens", "60"]
    args += ["--report-json", str(report), "--run-dir", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "4 external TP4 engines" in out and out.rstrip().endswith("all processes stopped; GPU clocks reset"), out
    rep = json.loads(report.read_text())
    q = rep["requests"]
    assert q["scheduled"] > 20 and q["answered"] == q["scheduled"] and q["failed"] == 0, q["errors"]
    assert rep["slo"]["engine_attainment"] >= 0.9  # modelled by the engines; the client's timers carry machine load
    e = rep["energy"]
    assert (
        "same 4 external instances at the highest clock" in e["baseline_source"] and "modelled" in e["baseline_source"]
    )
    assert 0 < e["wattgate_j"] < e["baseline_j"]  # the same engines at lower clocks than the max
    assert e["baseline"] == "fixed-fleet baseline" and "saving vs the fixed-fleet baseline" in out
    assert sorted(p.name for p in run.glob("engine-*.log")) == [
        f"engine-node{n}-e{k}.log" for n in (1, 2) for k in (0, 1)
    ]
    planner = (run / "planner.log").read_text()
    assert "4 fixed instance(s) on 16 GPUs" in planner and "0 to start" in planner
    with (run / "requests.csv").open() as f:
        instances = {row["instance"] for row in csv.DictReader(f)}
    assert instances <= {f"node{n}-e{k}" for n in (1, 2) for k in (0, 1)} and len(instances) >= 2
