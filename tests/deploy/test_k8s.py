"""Kubernetes manifests under deploy/k8s, checked structurally (no cluster here): kustomization complete,
well-formed objects, selectors and Services that match pods, probes on the gateway's real paths, the
planner single, the agent DaemonSet on GPU nodes with the privileges it needs, ``$(VAR)`` references
defined, Secrets documented, and every ``wattgate`` command line accepted by the real CLI."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    K8S,
    REPO,
    check_argv,
    load_yaml,
    load_yaml_all,
    require_subcommand,
    walk,
    wattgate_parser,
)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Values the downward API and the Secret would give, to parse command lines that use $(VAR).
PLACEHOLDERS = {
    "NODE_NAME": "gpu-node-1",
    "POD_IP": "10.1.2.3",
    "REDIS_PASSWORD": "s3cret",
    "MODEL": "meta-llama/Llama-3.1-8B-Instruct",
}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += load_yaml_all(path)
    return out


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"])


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            for c in _pod(d)["spec"]["containers"]:
                yield d, c


def _expand(argv: list[str]) -> list[str]:
    return [_REF.sub(lambda m: PLACEHOLDERS[m.group(1)], a) for a in argv]


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest() -> None:
    kust = load_yaml(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert kust["namespace"] == "wattgate"


def test_every_object_is_well_formed(docs: list[dict[str, Any]]) -> None:
    seen = set()
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), d["metadata"]
        key = (d["kind"], d["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Service", "Deployment", "DaemonSet"} <= kinds


# Keys of the core/v1 Container and PodSpec this kustomization may use: a typo (`readinesProbe`)
# would be refused by the API server (or dropped by an old one), so catch it here.
_CONTAINER_KEYS = {
    "name", "image", "command", "args", "env", "envFrom", "ports", "readinessProbe", "livenessProbe",
    "startupProbe", "resources", "securityContext", "volumeMounts", "workingDir", "imagePullPolicy", "lifecycle",
}  # fmt: skip
_POD_KEYS = {
    "containers", "initContainers", "volumes", "securityContext", "nodeSelector", "tolerations", "affinity",
    "terminationGracePeriodSeconds", "serviceAccountName", "hostPID", "hostNetwork", "hostIPC",
    "runtimeClassName", "priorityClassName", "imagePullSecrets", "dnsPolicy",
}  # fmt: skip
_PROBE_KEYS = {
    "httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold",
    "successThreshold",
}  # fmt: skip


def test_pods_use_only_known_keys_and_mount_declared_volumes(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] not in WORKLOAD_KINDS:
            continue
        name, spec = d["metadata"]["name"], _pod(d)["spec"]
        assert set(spec) <= _POD_KEYS, f"{name}: unknown pod keys {sorted(set(spec) - _POD_KEYS)}"
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"]:
            assert set(c) <= _CONTAINER_KEYS, f"{name}: unknown container keys {sorted(set(c) - _CONTAINER_KEYS)}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert set(c.get(probe, {})) <= _PROBE_KEYS, f"{name}: {probe}"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}: mounts undeclared volume {m['name']}"
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert volumes <= mounted, f"{name}: declared volumes {sorted(volumes - mounted)} are never mounted"


def test_workload_selectors_match_their_pods(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            selector = d["spec"]["selector"]["matchLabels"]
            assert _matches(selector, _pod(d)["metadata"]["labels"]), d["metadata"]["name"]


def test_services_select_existing_pods_and_ports(docs: list[dict[str, Any]]) -> None:
    pods = [_pod(d) for d in docs if d["kind"] in WORKLOAD_KINDS]
    services = [d for d in docs if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"wattgate-redis", "wattgate-gateway"}
    for svc in services:
        targets = [p for p in pods if _matches(svc["spec"]["selector"], p["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} workloads"
        ports = {p["name"] for c in targets[0]["spec"]["containers"] for p in c.get("ports", [])}
        ports |= {p["containerPort"] for c in targets[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {port['targetPort']}"
    pdb = _one(docs, "PodDisruptionBudget", "wattgate-gateway")
    gateway = _one(docs, "Deployment", "wattgate-gateway")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], _pod(gateway)["metadata"]["labels"])
    # Gateways are unready while no instance is; a PDB counting only ready pods would then block drains.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_gateway_deployment(docs: list[dict[str, Any]]) -> None:
    gateway = _one(docs, "Deployment", "wattgate-gateway")
    assert gateway["spec"]["replicas"] >= 2
    (c,) = _pod(gateway)["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    config = load_yaml_all(K8S / "config.yaml")[0]["data"]["gateway.yaml"]
    assert ports["http"] == yaml.safe_load(config)["port"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert _pod(gateway)["spec"]["securityContext"]["runAsNonRoot"] is True


def test_probe_paths_are_served_by_the_gateway(docs: list[dict[str, Any]]) -> None:
    app_mod = importlib.import_module("wattgate.gateway.app")
    settings_mod = importlib.import_module("wattgate.gateway.settings")
    settings = settings_mod.load_settings(None, env={}, backend_args=("http://127.0.0.1:9",))
    paths = {getattr(r, "path", None) for r in app_mod.create_app(settings).routes}
    (c,) = _pod(_one(docs, "Deployment", "wattgate-gateway"))["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in paths
    assert "/metrics" in paths


def test_gateway_config_map_is_mounted_where_the_command_reads_it(docs: list[dict[str, Any]]) -> None:
    gateway = _one(docs, "Deployment", "wattgate-gateway")
    (c,) = _pod(gateway)["spec"]["containers"]
    config_path = _flag(c["args"], "--config")
    volumes = {v["name"]: v for v in _pod(gateway)["spec"]["volumes"]}
    mount = next(m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cm = _one(docs, "ConfigMap", cm_name)
    assert config_path.rsplit("/", 1)[1] in cm["data"]


def test_gateway_config_map_is_valid_for_the_gateway(docs: list[dict[str, Any]], tmp_path: Any) -> None:
    settings_mod = importlib.import_module("wattgate.gateway.settings")
    path = tmp_path / "gateway.yaml"
    path.write_text(_one(docs, "ConfigMap", "wattgate-gateway")["data"]["gateway.yaml"])
    settings = settings_mod.load_settings(path, env={})
    assert settings.host == "0.0.0.0"


def test_planner_runs_single(docs: list[dict[str, Any]]) -> None:
    planner = _one(docs, "Deployment", "wattgate-planner")
    assert planner["spec"]["replicas"] == 1
    assert planner["spec"]["strategy"]["type"] == "Recreate", "never two planners during a rollout"


def test_agent_daemonset_runs_on_gpu_nodes_with_clock_privileges(docs: list[dict[str, Any]]) -> None:
    agent = _one(docs, "DaemonSet", "wattgate-agent")
    spec = _pod(agent)["spec"]
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in spec["tolerations"])
    assert spec["nodeSelector"], "only GPU nodes"
    (c,) = spec["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    sc = c["securityContext"]
    assert "SYS_ADMIN" in sc["capabilities"]["add"] or sc.get("privileged") is True
    assert sc["runAsUser"] == 0
    assert not spec.get("hostPID"), "engines are the agent's children; the host's PIDs are not needed"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert _flag(c["args"], "--node") == "$(NODE_NAME)"
    assert _flag(c["args"], "--host") == "$(POD_IP)", "gateways reach engines on the pod IP"
    assert spec["terminationGracePeriodSeconds"] >= 90, "drain (60 s) and stop (30 s) before SIGKILL"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    state_dir = _flag(c["args"], "--state-dir")
    state_mount = next(p for p in mounts if state_dir.startswith(p))
    assert "hostPath" in volumes[mounts[state_mount]], "clock-lock state must outlive the pod"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_env_references_are_defined_before_use(docs: list[dict[str, Any]]) -> None:
    for d, c in _containers(docs):
        defined: set[str] = set()
        for e in c.get("env", []):
            for ref in _REF.findall(e.get("value", "")):
                assert ref in defined, f"{d['metadata']['name']}: {e['name']} uses $({ref}) before it is defined"
            defined.add(e["name"])
        for arg in [*c.get("command", []), *c.get("args", [])]:
            for ref in _REF.findall(arg):
                assert ref in defined, f"{d['metadata']['name']}: $({ref}) is not in the container's env"


def test_config_maps_exist_and_secrets_are_documented(docs: list[dict[str, Any]]) -> None:
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    secrets: set[tuple[str, str]] = set()
    for node in walk(docs):
        if isinstance(node, dict) and "configMapKeyRef" in node:
            ref = node["configMapKeyRef"]
            assert ref["key"] in config_maps[ref["name"]]["data"]
        if isinstance(node, dict) and "configMap" in node and "name" in node["configMap"]:
            assert node["configMap"]["name"] in config_maps
        if isinstance(node, dict) and "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            if not ref.get("optional"):
                secrets.add((ref["name"], ref["key"]))
    assert secrets == {("wattgate-redis", "password")}
    guide = (REPO / "docs" / "deploy.md").read_text()
    for name, key in secrets:
        assert f"kubectl -n wattgate create secret generic {name} --from-literal={key}=" in guide


def test_prometheus_annotations_point_at_metrics_ports(docs: list[dict[str, Any]]) -> None:
    scraped = {}
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            ann = _pod(d)["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") == "true":
                ports = {p["containerPort"] for c in _pod(d)["spec"]["containers"] for p in c.get("ports", [])}
                assert int(ann["prometheus.io/port"]) in ports, d["metadata"]["name"]
                assert ann["prometheus.io/path"] == "/metrics"
                scraped[d["metadata"]["name"]] = ann["prometheus.io/port"]
    assert set(scraped) == {"wattgate-gateway", "wattgate-agent"}
    (c,) = _pod(_one(docs, "DaemonSet", "wattgate-agent"))["spec"]["containers"]
    assert _flag(c["args"], "--metrics-port") == scraped["wattgate-agent"]


def test_images(docs: list[dict[str, Any]]) -> None:
    images = {d["metadata"]["name"]: c["image"] for d, c in _containers(docs)}
    assert images["wattgate-gateway"].split(":")[0] == "wattgate"
    assert images["wattgate-planner"] == images["wattgate-gateway"]
    assert images["wattgate-agent"].split(":")[0] == "wattgate-agent"


@pytest.mark.parametrize("name", ["wattgate-gateway", "wattgate-planner", "wattgate-agent"])
def test_command_is_accepted_by_the_real_cli(docs: list[dict[str, Any]], name: str) -> None:
    workload = next(d for d in docs if d["kind"] in WORKLOAD_KINDS and d["metadata"]["name"] == name)
    (c,) = _pod(workload)["spec"]["containers"]
    assert c["command"] == ["wattgate"]
    argv = _expand(c["args"])
    parser = wattgate_parser()
    require_subcommand(parser, argv[0])
    args = check_argv(parser, argv)
    if argv[0] == "agent":
        settings = importlib.import_module("wattgate.agent.settings")
        assert settings.from_args(args).node == PLACEHOLDERS["NODE_NAME"]


def test_every_process_reaches_the_same_redis_with_the_same_prefix(docs: list[dict[str, Any]]) -> None:
    redis_svc = _one(docs, "Service", "wattgate-redis")
    expected = f"redis://:$(REDIS_PASSWORD)@{redis_svc['metadata']['name']}:{redis_svc['spec']['ports'][0]['port']}/0"
    gateway_cfg = yaml.safe_load(_one(docs, "ConfigMap", "wattgate-gateway")["data"]["gateway.yaml"])
    for d, c in _containers(docs):
        if d["metadata"]["name"] == "wattgate-redis":
            continue
        env = {e["name"]: e.get("value") for e in c["env"]}
        url = _flag(c["args"], "--redis-url") if "--redis-url" in c["args"] else env["WATTGATE_REDIS_URL"]
        assert url == expected, d["metadata"]["name"]
        if d["metadata"]["name"] != "wattgate-gateway":
            assert _flag(c["args"], "--redis-prefix") == gateway_cfg["redis_prefix"], d["metadata"]["name"]
