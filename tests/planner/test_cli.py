from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.planner.toy import toy_profile
from wattgate.cli import main
from wattgate.planner.cli import PLANNER, _loop_settings
from wattgate.planner.store import PlannerStore
from wattgate.settings.parse import parse


@pytest.fixture
def profile_path(tmp_path: Path) -> str:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(toy_profile().to_document()))
    return str(path)


def test_plan_prints_json(profile_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "--profile", profile_path, "--gpus", "16", "--load", "SS=2.5,SM=1.0", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus_used"] <= 16 and out["power_source"] == "modelled"
    served = sum(p["count"] * p["load_rps_each"] for p in out["pools"])
    assert served == pytest.approx(3.5)
    multi, single = out["multi_pool_baseline"], out["single_pool_baseline"]
    assert multi["power_w"] > out["predicted_power_w"]
    assert single["gpus"] == 8 * single["instances"] >= 8 and single["power_w"] > 0
    assert "single-pool baseline" in single["definition"] and "multi-pool baseline" in multi["definition"]
    idle_w = (16 - out["gpus_used"]) * 70.0
    assert out["predicted_cluster_power_w"] == pytest.approx(out["predicted_power_w"] + idle_w, abs=0.2)
    assert out["saving"]["vs_single_pool_baseline"] == pytest.approx(
        1 - out["predicted_cluster_power_w"] / single["power_w"], abs=1e-3
    )
    assert out["saving"]["vs_multi_pool_baseline"] == pytest.approx(
        1 - out["predicted_power_w"] / multi["power_w"], abs=1e-3
    )


def test_plan_prints_a_table_with_both_baselines(profile_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--profile", profile_path, "--gpus", "8", "--load", "SS=2.5"]) == 0
    out = capsys.readouterr().out
    assert "predicted power" in out and "(modelled)" in out
    assert "single-pool baseline (one pool of the largest TP a node holds" in out and " x TP" in out
    assert "multi-pool baseline (each type" in out
    assert "saving vs the single-pool baseline: " in out and "saving vs the multi-pool baseline: " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "8", "--load", "XX=1"], "unknown request type"),
        (["--gpus", "8", "--load", "SS=-1"], ">= 0"),
        (["--gpus", "8", "--load", "SS=abc"], "not a number"),
        (["--gpus", "0", "--load", "SS=1"], "--gpus: must be >= 1"),
        (["--gpus", "8", "--load", "SS"], "POOL=REQ_PER_S"),
        (["--gpus", "8"], "--load is required"),
    ],
)
def test_plan_bad_input_is_a_clear_error(
    profile_path: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["plan", "--profile", profile_path, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plan_missing_profile_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--profile", "/nonexistent.json", "--gpus", "8", "--load", "SS=1"]) == 2
    assert "error" in capsys.readouterr().err


def test_planner_once_publishes(profile_path: str, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["planner", "--profile", profile_path, "--redis-url", redis_url, "--gpus", "16", "--once"])
    assert rc == 0
    assert "published" in capsys.readouterr().out
    plan = PlannerStore(redis_url).current_plan()
    assert plan is not None and plan.version == 1  # no load yet: an empty plan, still published


def test_planner_bad_nodes_is_a_clear_error(profile_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["planner", "--profile", profile_path, "--nodes", "a=x", "--once"]) == 2
    assert "NAME=GPUS" in capsys.readouterr().err


def test_planner_gpus_and_nodes_are_alternatives(
    profile_path: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["planner", "--profile", profile_path, "--redis-url", redis_url, "--once"]
    assert main([*args, "--gpus", "16", "--nodes", "a=8"]) == 2
    assert "--gpus and --nodes are alternatives" in capsys.readouterr().err


def test_planner_nodes_as_a_count(profile_path: str, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["planner", "--profile", profile_path, "--redis-url", redis_url, "--once", "--nodes", "2"]
    assert main([*args, "--gpus-per-node", "4"]) == 0
    capsys.readouterr()
    plan = PlannerStore(redis_url).current_plan()
    assert plan is not None and plan.single_pool_gpus is not None
    assert {i.node for i in plan.instances} <= {"node1", "node2"}


def test_planner_negative_standby_max_s_is_a_clear_error(profile_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["planner", "--profile", profile_path, "--gpus", "8", "--standby-max-s", "-1", "--once"]) == 2
    assert "--standby-max-s: must be >= 0" in capsys.readouterr().err


def test_plan_without_a_profile_uses_the_builtin_or_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "--gpus", "64", "--load", "SS=1.0"])
    if importlib.util.find_spec("wattgate.profiles.builtin") is None:
        assert rc == 2
        assert "--profile PATH is required" in capsys.readouterr().err
    else:
        assert rc == 0
        assert "predicted power" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "quantile", "series", "headroom", "clock_headroom"),
    [
        ([], 0.9, "peaks", 1.0, 0.8),  # as the replay's wattgate: peaks carry the bursts, the clock loop keeps 0.8
        (["--series", "counts"], 0.9, "counts", 0.8, 0.8),
        (["--quantile", "0"], None, "peaks", 0.8, 0.8),  # the classic forecast and its headroom
        (["--headroom", "0.7"], 0.9, "peaks", 0.7, 0.7),
        (["--headroom", "0.8"], 0.9, "peaks", 0.8, 0.8),  # given, even at the default value: the plan keeps it
    ],
)
def test_planner_forecast_flags_pick_the_forecast_and_its_headroom(
    flags: list[str], quantile: float | None, series: str, headroom: float, clock_headroom: float
) -> None:
    s = _loop_settings(parse(PLANNER, ["--gpus", "16", *flags], env={}))
    assert (s.quantile, s.series, s.solver.amortize_s) == (quantile, series, 600.0)
    assert (s.solver.headroom, s.clock_headroom) == (headroom, clock_headroom)


def test_planner_headroom_from_the_environment_or_a_file_also_counts_as_given(tmp_path: Path) -> None:
    """'Unless headroom is set' means set any of the three ways, not only by flag."""
    by_env = _loop_settings(parse(PLANNER, ["--gpus", "16"], env={"WATTGATE_HEADROOM": "0.6"}))
    config = tmp_path / "p.yaml"
    config.write_text("headroom: 0.6\n")
    by_file = _loop_settings(parse(PLANNER, ["--gpus", "16", "--config", str(config)], env={}))
    for s in (by_env, by_file):
        assert (s.solver.headroom, s.clock_headroom) == (0.6, 0.6)
