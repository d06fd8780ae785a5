"""docker-compose.yml for one GPU host, checked structurally (no Docker engine here): services, ports,
volumes, GPU reservation, privileges, health checks, start order, every variable in .env.example, every
``wattgate`` command line accepted by the real CLI parser, and Prometheus/Grafana wired to them."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    DEPLOY,
    REPO,
    InterpolationError,
    check_argv,
    compose_variables,
    interpolate,
    interpolate_tree,
    load_yaml,
    read_env_file,
    require_subcommand,
    wattgate_parser,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
WATTGATE_SERVICES = ("gateway", "planner", "agent")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as docker compose sees it with .env.example copied to .env."""
    doc = interpolate_tree(load_yaml(COMPOSE_FILE), env)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def _argv(service: dict[str, Any]) -> list[str]:
    entry, command = service.get("entrypoint"), service.get("command")
    assert entry == ["wattgate"], "wattgate services name their entrypoint explicitly"
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), "command is a list of strings"
    return list(command)


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", str(text))
    assert m, f"not a duration: {text!r}"
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "gateway", "planner", "agent", "prometheus", "grafana"}


def test_every_variable_is_defined_in_env_example_and_every_example_is_used(env: dict[str, str]) -> None:
    used = compose_variables(COMPOSE_FILE.read_text())
    assert used, "the compose file reads its settings from .env"
    assert sorted(used - set(env)) == [], "variables used by docker-compose.yml but missing from .env.example"
    assert sorted(set(env) - used) == [], "entries of .env.example that docker-compose.yml never reads"


def test_required_variables_fail_loudly_when_missing(env: dict[str, str]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "${MODEL:?" in text
    without_model = {k: v for k, v in env.items() if k != "MODEL"}
    with pytest.raises(InterpolationError, match="MODEL"):
        interpolate_tree(load_yaml(COMPOSE_FILE), without_model)


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("${A}-${B:-d}-${EMPTY:-e}-${EMPTY-f}-$$A-$A", env) == "x-d-e--$A-x"
    assert interpolate("$${A:+--flag}", env) == "${A:+--flag}"
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?needed}", env)


def test_published_ports(services: dict[str, Any], env: dict[str, str]) -> None:
    def published(name: str) -> dict[str, str]:
        return {p.split(":")[1]: p.split(":")[0] for p in services[name].get("ports", [])}

    gateway_cfg = load_yaml(DEPLOY / "gateway" / "gateway.yaml")
    assert published("gateway") == {str(gateway_cfg["port"]): env["GATEWAY_PORT"]}
    assert published("prometheus") == {"9090": env["PROMETHEUS_PORT"]}
    assert published("grafana") == {"3000": env["GRAFANA_PORT"]}
    # Redis, the planner and the agent are reached only on the compose network.
    for name in ("redis", "planner", "agent"):
        assert "ports" not in services[name], f"{name} must not be published on the host"


def test_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, svc in services.items():
        for spec in svc.get("volumes", []):
            source, target = spec.split(":")[:2]
            assert target.startswith("/"), f"{name}: {spec}"
            if source.startswith((".", "/")):
                if "huggingface" not in target:  # the HF cache is a host directory the user chooses
                    assert (REPO / source).exists(), f"{name}: bind mount {source} is not in the repo"
            else:
                used.add(source)
    assert used == declared, "named volumes used and declared differ"
    assert "redis-data:/data" in services["redis"]["volumes"]
    agent_targets = {v.split(":")[1] for v in services["agent"]["volumes"]}
    assert {"/var/lib/wattgate", "/root/.cache/huggingface"} <= agent_targets


def test_agent_state_dir_lives_on_its_volume(services: dict[str, Any]) -> None:
    state_dir = Path(_flag(_argv(services["agent"]), "--state-dir"))
    mounts = [Path(v.split(":")[1]) for v in services["agent"]["volumes"] if not v.startswith(".")]
    assert any(state_dir.is_relative_to(m) for m in mounts), "clock-lock state must survive a container restart"


def test_agent_reserves_nvidia_gpus(services: dict[str, Any], env: dict[str, str]) -> None:
    devices = services["agent"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    dev = devices[0]
    assert dev["driver"] == "nvidia"
    assert "gpu" in dev["capabilities"]
    assert str(dev["count"]) == env["GPU_COUNT"]
    assert str(dev["count"]) == "all" or int(dev["count"]) > 0
    assert "device_ids" not in dev, "count and device_ids exclude each other"
    for name, svc in services.items():
        if name != "agent":
            assert "deploy" not in svc, f"only the agent reserves GPUs, not {name}"


def test_agent_has_what_it_needs_to_lock_clocks_and_run_vllm(services: dict[str, Any]) -> None:
    agent = services["agent"]
    assert "SYS_ADMIN" in agent.get("cap_add", []) or agent.get("privileged") is True
    assert agent.get("user") in {"0", "0:0", "root"}
    assert agent.get("ipc") == "host" or "shm_size" in agent, "vLLM tensor parallelism needs shared memory"
    assert agent.get("init") is True, "an init reaps engine workers and forwards SIGTERM"
    argv = _argv(agent)
    assert _flag(argv, "--gpu-kind") == "nvml"
    assert _flag(argv, "--engine") == "vllm"
    assert _flag(argv, "--host") == "agent", "engines must be reachable from the gateway by the service name"
    # SIGTERM: the agent drains (60 s by default) and stops engines (30 s grace) before it exits.
    assert _seconds(agent["stop_grace_period"]) >= 90
    assert "HF_TOKEN" in agent["environment"]
    for name in ("gateway", "planner", "redis", "prometheus", "grafana"):
        svc = services[name]
        assert not svc.get("privileged") and not svc.get("cap_add"), f"{name} needs no privileges"


def test_health_checks(services: dict[str, Any]) -> None:
    for name in ("redis", "gateway", "agent", "prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, name
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/health" in " ".join(services["gateway"]["healthcheck"]["test"])
    metrics_port = _flag(_argv(services["agent"]), "--metrics-port")
    assert f"http://127.0.0.1:{metrics_port}/metrics" in " ".join(services["agent"]["healthcheck"]["test"])


def test_start_order(services: dict[str, Any]) -> None:
    for name in WATTGATE_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"


def test_redis_password_is_optional_and_shared(services: dict[str, Any], env: dict[str, str]) -> None:
    raw = load_yaml(COMPOSE_FILE)["services"]
    assert env["REDIS_PASSWORD"] == ""
    redis_cmd = " ".join(raw["redis"]["command"])
    assert '$${REDIS_PASSWORD:+--requirepass "$$REDIS_PASSWORD"}' in redis_cmd
    with_pw = interpolate_tree(load_yaml(COMPOSE_FILE), {**env, "REDIS_PASSWORD": "s3cret"})["services"]
    for name in ("gateway", "planner"):
        assert with_pw[name]["environment"]["WATTGATE_REDIS_URL"] == "redis://:s3cret@redis:6379/0"
    assert with_pw["agent"]["environment"]["WATTGATE_REDIS_URL"] == "redis://:s3cret@redis:6379/0"
    assert "--redis-url" not in _argv(with_pw["agent"]), "the password stays out of the process list"
    assert services["gateway"]["environment"]["WATTGATE_REDIS_URL"] == "redis://:@redis:6379/0"


@pytest.mark.parametrize("name", WATTGATE_SERVICES)
def test_command_is_accepted_by_the_real_cli(services: dict[str, Any], name: str) -> None:
    argv = _argv(services[name])
    assert argv[0] == name, f"the {name} service runs `wattgate {name}`"
    parser = wattgate_parser()
    require_subcommand(parser, argv[0])
    args = check_argv(parser, argv)
    assert callable(getattr(args, "func", None))
    if name == "agent":  # the agent also validates its settings beyond argparse
        settings = importlib.import_module("wattgate.agent.settings")
        assert settings.from_args(args).model


def test_cli_check_catches_a_wrong_flag() -> None:
    parser = argparse.ArgumentParser(prog="wattgate")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("gateway")
    p.add_argument("--port", type=int)
    p.add_argument("--redis-url", required=True)
    assert check_argv(parser, ["gateway", "--redis-url", "redis://r", "--port", "8080"]).port == 8080
    with pytest.raises(AssertionError, match="unrecognized arguments: --prot"):
        check_argv(parser, ["gateway", "--redis-url", "redis://r", "--prot", "8080"])
    with pytest.raises(AssertionError, match="--redis-url"):
        check_argv(parser, ["gateway"])


def test_gateway_config_file_is_mounted_and_valid(services: dict[str, Any]) -> None:
    config_path = _flag(_argv(services["gateway"]), "--config")
    mounts = dict(reversed(v.split(":")[:2]) for v in services["gateway"]["volumes"])
    assert config_path in mounts
    assert (REPO / mounts[config_path]).resolve() == (DEPLOY / "gateway" / "gateway.yaml").resolve()
    settings_mod = importlib.import_module("wattgate.gateway.settings")
    settings = settings_mod.load_settings(DEPLOY / "gateway" / "gateway.yaml", env={})
    assert settings.host == "0.0.0.0" and settings.port == 8080


def test_prometheus_scrapes_gateway_and_agent(services: dict[str, Any], env: dict[str, str]) -> None:
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {}
    for job in prom["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job["static_configs"]:
            for t in sc["targets"]:
                targets[t] = sc.get("labels", {})
    metrics_port = _flag(_argv(services["agent"]), "--metrics-port")
    assert set(targets) == {"gateway:8080", f"agent:{metrics_port}"}
    assert targets[f"agent:{metrics_port}"]["node"] == env["NODE_NAME"], "the node label names the agent's node"
    mounts = [v.split(":")[0] for v in services["prometheus"]["volumes"]]
    assert "./deploy/prometheus/prometheus.yml" in mounts


def test_grafana_is_provisioned(services: dict[str, Any]) -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"]
    assert [d["url"] for d in ds] == ["http://prometheus:9090"]
    providers = load_yaml(prov / "dashboards" / "wattgate.yml")["providers"]
    mounts = dict(reversed(v.split(":")[:2]) for v in services["grafana"]["volumes"])
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dash_dir = providers[0]["options"]["path"]
    assert (REPO / mounts[dash_dir]).resolve() == (DEPLOY / "grafana" / "dashboards").resolve()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).relative_to(dash_dir)).is_file()


def test_images_build_from_the_repo(services: dict[str, Any]) -> None:
    assert (REPO / services["gateway"]["build"]["dockerfile"]).is_file()
    assert (REPO / services["agent"]["build"]["dockerfile"]).is_file()
    assert services["planner"]["image"] == services["gateway"]["image"], "one image for gateway and planner"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    assert re.search(r"^USER 10001", dockerfile, re.M), "gateway and planner run unprivileged"
    assert 'ENTRYPOINT ["wattgate"]' in dockerfile
    agent_file = (REPO / "Dockerfile.agent").read_text()
    assert re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v[\d.]+$", agent_file, re.M)
    assert 'ENTRYPOINT ["wattgate"]' in agent_file
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "tests"} <= ignored


# Keys of the Compose specification this file may use: docker compose refuses a file with a typo
# (`depend_on`, `healtcheck`), so catch it here rather than on the GPU host.
_TOP_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets"}
_SERVICE_KEYS = {
    "build", "cap_add", "cap_drop", "command", "container_name", "depends_on", "deploy", "devices",
    "entrypoint", "env_file", "environment", "expose", "extra_hosts", "gpus", "healthcheck", "hostname",
    "image", "init", "ipc", "labels", "logging", "network_mode", "networks", "pid", "platform", "ports",
    "privileged", "profiles", "read_only", "restart", "security_opt", "shm_size", "stop_grace_period",
    "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "volumes", "working_dir",
}  # fmt: skip
_HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
_DEVICE_KEYS = {"capabilities", "driver", "count", "device_ids", "options"}


def test_only_compose_spec_keys(compose: dict[str, Any], services: dict[str, Any]) -> None:
    assert {k for k in compose if not k.startswith("x-")} <= _TOP_KEYS
    for name, svc in services.items():
        assert set(svc) <= _SERVICE_KEYS, f"{name}: unknown keys {sorted(set(svc) - _SERVICE_KEYS)}"
        assert "image" in svc, f"{name} names its image"
        assert set(svc.get("healthcheck", {})) <= _HEALTHCHECK_KEYS, name
        assert svc.get("restart", "unless-stopped") in {"no", "always", "on-failure", "unless-stopped"}
    for dev in services["agent"]["deploy"]["resources"]["reservations"]["devices"]:
        assert set(dev) <= _DEVICE_KEYS


def test_every_process_uses_the_same_redis_key_prefix(services: dict[str, Any]) -> None:
    gateway_prefix = load_yaml(DEPLOY / "gateway" / "gateway.yaml")["redis_prefix"]
    assert _flag(_argv(services["planner"]), "--redis-prefix") == gateway_prefix
    assert _flag(_argv(services["agent"]), "--redis-prefix") == gateway_prefix
