"""The settings model, walked: every option of every command reachable by flag, ``WATTGATE_<OPTION>`` and the
YAML file (through real ``wattgate`` processes and ``--print-settings``), one meaning and default per name,
``--help`` and the README tables showing every default, and unknown or unparseable variables refused."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from wattgate.agent.engines.emulator import EmulatorSettings
from wattgate.agent.settings import AgentSettings
from wattgate.classifier.adapt import AdaptSettings
from wattgate.cli import commands
from wattgate.gateway.settings import GatewaySettings
from wattgate.planner.forecast import ForecastSettings
from wattgate.planner.loop import LoopSettings
from wattgate.planner.model import SolverSettings
from wattgate.profiles.classes import LENGTH_CLASSES, SloTargets
from wattgate.servingmodel.arch import ARCHITECTURES
from wattgate.servingmodel.calibration import load_calibration
from wattgate.settings import common
from wattgate.settings.model import Command, Option, SettingsError
from wattgate.settings.parse import OTHER_VARIABLES, options_of, parse, resolve
from wattgate.settings.readme import render, tables_in
from wattgate.simulate.policies import Calibrated
from wattgate.simulate.run import SimSettings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {c.name: c for c in commands()}

# The only options whose default differs between commands, and why (the README tables show each default).
DEFAULTS_THAT_DIFFER = {
    ("gpus", "plan"): "required: the budget to plan for",
    ("port", "sim-backend"): "an engine's port, not the gateway's 8080",
    ("speed", "demo"): "the demo walks through 4x as much of the trace",
    ("duration_s", "demo"): "two minutes of replay",
    ("nodes", "demo"): "two simulated nodes",
    ("load_window_s", "sim-backend"): "the emulated engine's own arrival window",
    ("log_level", "sim-backend"): "engines the agent starts log warnings only",
    ("seed", "profile"): "the shipped profile's sweep was made with seed 1",
    ("model", "sim-backend"): "required: the name clients send",
    ("out", "profile"): "required: the profile file to write",
    ("trace", "simulate"): "required: what to replay",
}


def sample(o: Option) -> str:
    """A valid value of ``o`` other than its default, as text (flags and environment)."""
    if o.example:
        return o.example
    if o.kind.switch:
        return "false" if o.default else "true"
    if o.kind.metavar.startswith("{"):
        return next(c for c in o.kind.metavar.strip("{}").split(",") if c != o.default)
    if isinstance(o.default, bool) or not isinstance(o.default, (int, float)):
        raise AssertionError(f"option {o.name}: give it an example= (no value other than the default is derivable)")
    return str(o.default + 1)


def shown(o: Option, text: str) -> str:
    return o.kind.show(o.kind.convert(text))


def all_options() -> list[tuple[Command, Option]]:
    return [(c, o) for c in COMMANDS.values() for o in options_of(c)]


def test_every_command_is_in_the_model() -> None:
    assert set(COMMANDS) == {
        "gateway",
        "report",
        "plan",
        "planner",
        "agent",
        "classifier eval",
        "classifier retrain",
        "simulate",
        "demo",
        "sim-backend",
        "profile",
    }


def test_one_name_one_meaning() -> None:
    """Options of the same name have the same kind (values, unit) everywhere, and the same default unless the
    difference is one of DEFAULTS_THAT_DIFFER; flags and variables are unique within a command."""
    by_name: dict[str, list[tuple[Command, Option]]] = {}
    for c, o in all_options():
        by_name.setdefault(o.name, []).append((c, o))
    base = {o.name: o for o in vars(common).values() if isinstance(o, Option)}
    for name, uses in by_name.items():
        ref = base.get(name, uses[0][1])
        for c, o in uses:
            assert o.kind.label == ref.kind.label, f"{name} in {c.name}: another kind than elsewhere"
            differs = o.default != ref.default or o.required != ref.required
            if differs:
                assert (name, c.name) in DEFAULTS_THAT_DIFFER, (
                    f"{name} in {c.name}: default {o.default!r} vs {ref.default!r}"
                )
    for c in COMMANDS.values():
        flags = [f for o in options_of(c) for f in o.flags if not o.positional]
        assert len(flags) == len(set(flags)), c.name
        envs = [o.env for o in options_of(c)]
        assert len(envs) == len(set(envs)), c.name


def test_every_option_has_a_valid_sample_other_than_its_default() -> None:
    for c, o in all_options():
        value = o.kind.convert(sample(o))
        assert o.kind.show(value) != o.shown_default() or o.required, f"{c.name} {o.name}"


def test_defaults_agree_with_the_settings_objects_they_feed() -> None:
    """One source of defaults: the objects the commands build carry the same defaults as the model."""

    def check(command: str, obj: Any, names: dict[str, str]) -> None:
        for option, field in names.items():
            default = COMMANDS[command].option(option).default
            assert getattr(obj, field) == default, f"{command} {option}: {getattr(obj, field)!r} vs {default!r}"

    gateway = GatewaySettings()
    parsed_apart = {"edges", "backends", "api_keys", "admin_api_keys", "class_deadlines"}  # from_values builds them
    fields = {f.name for f in dataclasses.fields(GatewaySettings)} - parsed_apart
    check("gateway", gateway, {f: f for f in fields})
    assert gateway.edges == COMMANDS["gateway"].option("class_edges").default
    for name in parsed_apart - {"edges"}:
        assert not getattr(gateway, name) and not COMMANDS["gateway"].option(name).default, name
    agent = AgentSettings(redis_url="redis://x", node="n", model="m")
    skip = {"redis_url", "node", "model", "state_dir", "gpu_indices", "engine", "externals", "engine_command"}
    check("agent", agent, {f.name: f.name for f in dataclasses.fields(AgentSettings) if f.name not in skip})
    # no --engine: vllm, or external when --external servers are given (from_values decides)
    assert agent.engine.value == "vllm" and COMMANDS["agent"].option("engine").default is None
    slo = SloTargets()
    assert tuple(slo.ttft_p99_s[c] for c in LENGTH_CLASSES) == common.TTFT_S.default
    assert slo.tbt_p99_s == common.TBT_S.default
    check(
        "planner",
        SolverSettings(),
        {"gpus_per_node": "gpus_per_node", "time_limit_s": "time_limit_s", "headroom": "headroom"},
    )
    check("planner", ForecastSettings(), {"margin": "margin"})
    check(
        "planner",
        LoopSettings(),
        {
            "cluster_period_s": "cluster_period_s",
            "pool_period_s": "pool_period_s",
            "lease_s": "lease_s",
            "quantile": "quantile",
            "lead_s": "lead_s",
            "series": "series",
            "standby_max_s": "standby_max_s",
        },
    )
    check(
        "simulate",
        SimSettings(),
        {
            "gpus": "gpus",
            "epoch_s": "epoch_s",
            "seed": "seed",
            "headroom": "headroom",
            "arch": "arch",
            "engine_calibration": "engine",
            "iso_slo_target": "iso_slo_target",
        },
    )
    check("simulate", Calibrated(), {"quantile": "quantile", "amortize_s": "amortize_s"})
    check(
        "sim-backend",
        EmulatorSettings(model="m", tp=1),
        {
            "arch": "arch",
            "engine_calibration": "engine",
            "sim_speed": "speed",
            "max_num_seqs": "max_num_seqs",
            "max_num_batched_tokens": "max_num_batched_tokens",
            "gpu_memory_utilization": "gpu_memory_utilization",
            "load_window_s": "load_window_s",
            "default_output_tokens": "default_output_tokens",
        },
    )
    assert EmulatorSettings(model="m", tp=1).edges == COMMANDS["sim-backend"].option("class_edges").default
    # the choices are the serving model's: every architecture and every engine calibration it ships
    assert set(common.ARCH.kind.metavar.strip("{}").split(",")) == set(ARCHITECTURES)
    assert set(common.ENGINE_CALIBRATION.kind.metavar.strip("{}").split(",")) == set(load_calibration().engines)
    check(
        "classifier retrain",
        AdaptSettings(),
        {"holdout_fraction": "holdout_fraction", "min_observations": "min_observations"},
    )


def test_readme_has_every_table_and_they_are_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tables_in(readme) >= set(COMMANDS), f"missing: {set(COMMANDS) - tables_in(readme)}"
    assert render(readme, list(COMMANDS.values())) == readme, "run: .venv/bin/python -m wattgate.settings.readme"
    for _, o in all_options():
        assert f"`{o.env}`" in readme, o.env


def _wattgate(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATTGATE_")}
    full = {**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "2000", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "wattgate", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_option_and_its_default(name: str) -> None:
    res = _wattgate([*name.split(), "--help"])
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for o in options_of(COMMANDS[name]):
        assert (o.name if o.positional else o.main_flag) in text, o.name
        assert f"default: {o.shown_default()}]" in text, f"{o.name}: default {o.shown_default()!r} not in --help"
    assert "WATTGATE_<OPTION>" in text


def _expected(c: Command, source: str, config: Path) -> dict[str, dict[str, str]]:
    out = {}
    for o in options_of(c):
        if o.name == "config":
            out[o.name] = {
                "value": str(config),
                "source": "environment WATTGATE_CONFIG" if source == "env" else f"flag {o.main_flag}",
            }
            continue
        where = {"flag": f"flag {o.main_flag}", "env": f"environment {o.env}", "file": f"file {config}"}[source]
        out[o.name] = {"value": shown(o, sample(o)), "source": where}
    return out


def _run_with_every_option(c: Command, source: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    config = tmp / f"{source}.yaml"
    args, env, doc = [*c.name.split()], {}, {}
    for o in options_of(c):
        if o.name == "config":
            continue
        text = sample(o)
        if source == "flag":
            if o.positional:
                args += [text]
            elif o.kind.switch:
                args += [o.main_flag if o.kind.convert(text) else f"--no-{o.main_flag[2:]}"]
            else:
                args += [f"{o.main_flag}={text}"]  # = keeps a value that starts with -- a value
        elif source == "env":
            env[o.env] = text
        else:
            doc[o.name] = text
    config.write_text(yaml.safe_dump(doc))
    if source == "env":
        env["WATTGATE_CONFIG"] = str(config)
    else:
        args += ["--config", str(config)]
    return _wattgate([*args, "--print-settings"], env=env, cwd=tmp)


@pytest.mark.parametrize("source", ["flag", "env", "file"])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_reachable_by_flag_environment_and_file(name: str, source: str, tmp_path: Path) -> None:
    c = COMMANDS[name]
    res = _run_with_every_option(c, source, tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["command"] == name
    assert got["settings"] == _expected(c, source, tmp_path / f"{source}.yaml")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_defaults_come_from_the_model(name: str, tmp_path: Path) -> None:
    c = COMMANDS[name]
    args = [*name.split()]
    for o in options_of(c):
        if o.required:
            args += [sample(o)] if o.positional else [o.main_flag, sample(o)]
    res = _wattgate([*args, "--print-settings"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    settings = json.loads(res.stdout)["settings"]
    for o in options_of(c):
        if not o.required:
            assert settings[o.name] == {"value": o.kind.show(o.default), "source": "default"}, o.name


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9001\nread_timeout_s: 11\nconnect_timeout_s: 3\n")
    res = _wattgate(
        ["gateway", "--config", str(config), "--port", "9003", "--print-settings"],
        env={"WATTGATE_PORT": "9002", "WATTGATE_READ_TIMEOUT_S": "12"},
    )
    s = json.loads(res.stdout)["settings"]
    assert s["port"] == {"value": "9003", "source": "flag --port"}
    assert s["read_timeout_s"] == {"value": "12", "source": "environment WATTGATE_READ_TIMEOUT_S"}
    assert s["connect_timeout_s"] == {"value": "3", "source": f"file {config}"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WATTGATE_ACCESS_LOG": "maybe"}, "WATTGATE_ACCESS_LOG: expected true or false"),
        ({"WATTGATE_PORT": "80x"}, "WATTGATE_PORT: expected an integer, got '80x'"),
        ({"WATTGATE_READ_TIMEOUT_S": "-1"}, "WATTGATE_READ_TIMEOUT_S: must be > 0"),
        ({"WATTGATE_LOG_LEVEL": "loud"}, "WATTGATE_LOG_LEVEL: expected one of critical"),
        ({"WATTGATE_REDIS_URL": "http://r"}, "WATTGATE_REDIS_URL: must start with redis://"),
        ({"WATTGATE_API_KEY_ENV": "X"}, "unknown environment variable WATTGATE_API_KEY_ENV"),
        (
            {"WATTGATE_TBT": "0.2"},
            "unknown environment variable WATTGATE_TBT: no wattgate option is called that; "
            "did you mean WATTGATE_TBT_S?",
        ),
    ],
)
def test_bad_environment_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    res = _wattgate(["gateway", "--backend", "http://127.0.0.1:9"], env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("wattgate gateway: error: ") and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_every_command_refuses_an_unknown_variable_and_a_bad_value() -> None:
    env_ok = {k: v for k, v in os.environ.items() if not k.startswith("WATTGATE_")}
    for c in COMMANDS.values():
        with pytest.raises(SettingsError, match="unknown environment variable WATTGATE_NO_SUCH_OPTION"):
            parse(c, [], env={**env_ok, "WATTGATE_NO_SUCH_OPTION": "1"})
        for o in options_of(c):
            if o.kind.label.startswith(("integer", "number", "true|false")) or o.kind.metavar.startswith("{"):
                with pytest.raises(SettingsError, match=f"^{o.env}: "):
                    parse(c, [], env={**env_ok, o.env: "not-a-value"})


def test_variables_that_are_not_options_are_known_and_named_variables_are_allowed() -> None:
    gateway = COMMANDS["gateway"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTGATE_")}
    for name in OTHER_VARIABLES:
        parse(gateway, ["--backend", "http://h:1"], env={**env, name: "x"})
    keys = parse(gateway, ["--api-keys-env", "WATTGATE_CLIENT_KEYS"], env={**env, "WATTGATE_CLIENT_KEYS": "k"})
    assert keys.api_keys_env == "WATTGATE_CLIENT_KEYS"


def test_file_keys_of_other_commands_warn_and_unknown_ones_fail(tmp_path: Path) -> None:
    config = tmp_path / "all.yaml"
    config.write_text("redis_url: redis://r:6379/0\ntbt_s: 0.2\n")
    res = _wattgate(["gateway", "--config", str(config), "--print-settings"])
    assert res.returncode == 0, res.stderr
    assert "tbt_s is not an option of this command; ignored" in res.stderr
    config.write_text("read_timout_s: 5\n")
    res = _wattgate(["gateway", "--config", str(config), "--print-settings"])
    assert res.returncode == 2
    assert "unknown option 'read_timout_s'; did you mean read_timeout_s?" in res.stderr


def test_yaml_native_values(tmp_path: Path) -> None:
    def from_file(command: str, text: str) -> Any:
        config = tmp_path / "c.yaml"
        config.write_text(text)
        return resolve(COMMANDS[command], {"config": str(config)}, {})

    with pytest.raises(SettingsError, match=r"c\.yaml: gpus: must be >= 1"):
        from_file("plan", "gpus: 0\nload: {SS: 1}\n")
    v = from_file("plan", "gpus: 16\nload: {SS: 1.5}\nttft_s: [0.3, 0.6, 2]\njson: true\n")
    assert (v.gpus, v.load, v.ttft_s, v.json) == (16, {"SS": 1.5}, (0.3, 0.6, 2.0), True)
    edges = "{input_short_max: 100, input_medium_max: 200, output_short_max: 10, output_medium_max: 20}"
    gw = from_file("gateway", f"class_edges: {edges}\nbackends:\n  - {{url: 'http://h:1', model: m}}\n")
    assert gw.class_edges.input_medium_max == 200 and gw.backends[0].models == ("m",)
    with pytest.raises(SettingsError, match=r"c\.yaml: access_log: expected true or false"):
        from_file("gateway", "access_log: 3\n")
