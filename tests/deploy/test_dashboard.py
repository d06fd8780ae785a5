"""The Grafana dashboard: valid JSON wired to the provisioned datasource, PromQL that queries only the
metrics listed in deploy/metrics.yaml with their real suffixes and labels, and that list checked
against the exporters' own registries (the gateway's and the agent's metrics classes)."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest

from tests.deploy.support import DEPLOY, load_yaml

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "wattgate.json"
CATALOGUE = DEPLOY / "metrics.yaml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Labels Prometheus adds to every scraped series (node: compose static label / k8s pod relabelling).
TARGET_LABELS = {"job", "instance", "node"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
_METRIC = re.compile(r"\b(wattgate_[a-z0-9_]+)\b")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    return dict(load_yaml(CATALOGUE))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in _panels(dashboard) for t in p["targets"]]


def _family(sample: str, metrics: dict[str, Any]) -> tuple[str, str]:
    """(family, suffix) of a sample name as queried, e.g. wattgate_x_bucket -> (wattgate_x, _bucket)."""
    for family, spec in metrics.items():
        for suffix in _SUFFIXES[spec["type"]]:
            if sample == family + suffix:
                return family, suffix
    raise AssertionError(f"{sample} is not a listed metric queried with its type's suffix (see deploy/metrics.yaml)")


def _labels_in(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    names: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return names


def _allowed_labels(families: list[str], metrics: dict[str, Any]) -> set[str]:
    allowed = set(TARGET_LABELS)
    for family in families:
        spec = metrics[family]
        own = set(spec["labels"])
        if "instance" in own:  # Prometheus keeps the target's `instance` and renames the metric's own
            own = (own - {"instance"}) | {"exported_instance"}
        allowed |= own
        if spec["type"] == "histogram":
            allowed.add("le")
    return allowed


def test_dashboard_is_wired_to_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    assert dashboard["uid"] == "wattgate"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == uid
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{panel['title']} is off the grid"


def test_dashboard_shows_what_operators_watch(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for t in _targets(dashboard))
    for needed in (
        "sum by (node) (wattgate_agent_gpu_power_watts)",  # power per node
        "sum(wattgate_agent_gpu_power_watts)",  # total power
        "wattgate_agent_gpu_energy_joules",  # energy
        "wattgate_gateway_ttft_seconds_bucket",  # TTFT SLO attainment and histogram
        "wattgate_gateway_tbt_seconds_bucket",  # TBT
        "sum by (pool) (rate(wattgate_gateway_requests_total",  # requests/s per pool
        "wattgate_agent_instances",  # instances
        "wattgate_agent_gpu_sm_clock_mhz",  # clocks
    ):
        assert needed in exprs, f"no panel queries {needed}"


def test_promql_is_balanced(dashboard: dict[str, Any]) -> None:
    for t in _targets(dashboard):
        expr = t["expr"]
        for opening, closing in ("()", "{}", "[]"):
            depth = 0
            for ch in expr:
                depth += (ch == opening) - (ch == closing)
                assert depth >= 0, f"unbalanced {opening}{closing}: {expr}"
            assert depth == 0, f"unbalanced {opening}{closing}: {expr}"


def test_dashboard_queries_only_catalogued_metrics_with_their_labels(
    dashboard: dict[str, Any], catalogue: dict[str, Any]
) -> None:
    metrics = catalogue["metrics"]
    queried: set[str] = set()
    for t in _targets(dashboard):
        expr = t["expr"]
        families = [_family(name, metrics)[0] for name in _METRIC.findall(expr)]
        assert families, f"query names no wattgate metric: {expr}"
        queried |= set(families)
        allowed = _allowed_labels(families, metrics)
        assert _labels_in(expr) <= allowed, f"{expr}: labels {sorted(_labels_in(expr) - allowed)} do not exist"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
        assert legend <= allowed, f"legend {t['legendFormat']!r} names labels the series lack"
    assert queried == set(metrics), "deploy/metrics.yaml lists exactly the metrics the dashboard queries"


def test_catalogue_check_catches_a_wrong_name_or_label(dashboard: dict[str, Any], catalogue: dict[str, Any]) -> None:
    metrics = catalogue["metrics"]
    with pytest.raises(AssertionError, match="not a listed metric"):
        _family("wattgate_gateway_requests", metrics)  # a counter queried without _total
    with pytest.raises(AssertionError, match="not a listed metric"):
        _family("wattgate_gateway_ttft_seconds", metrics)  # a histogram queried bare
    assert ("wattgate_gateway_ttft_seconds", "0.25") in _bucket_bounds_queried(dashboard)
    allowed = _allowed_labels(["wattgate_gateway_in_flight"], metrics)
    assert "exported_instance" in allowed
    assert not _labels_in("sum by (pool) (wattgate_gateway_in_flight)") <= allowed


@pytest.mark.parametrize("exporter", ["gateway", "agent"])
def test_catalogue_matches_the_exporter(dashboard: dict[str, Any], catalogue: dict[str, Any], exporter: str) -> None:
    """Every listed metric is exported with that type and those labels (runs once the branch is merged)."""
    spec = catalogue["exporters"][exporter]
    module = importlib.import_module(spec["module"])
    instance = getattr(module, spec["class"])()
    collectors = {c._name: c for c in instance.registry._collector_to_names if hasattr(c, "_labelnames")}
    # prometheus_client keeps name, type and label names on every metric wrapper
    exported = {name: (c._type, tuple(c._labelnames)) for name, c in collectors.items()}
    wanted = {name: m for name, m in catalogue["metrics"].items() if m["exporter"] == exporter}
    assert wanted, f"no metric listed for {exporter}"
    for name, m in wanted.items():
        assert name in exported, f"{spec['class']} exports no {name}; it has {sorted(exported)}"
        kind, labels = exported[name]
        assert kind == m["type"], f"{name} is a {kind}, listed as {m['type']}"
        assert set(labels) == set(m["labels"]), f"{name} has labels {labels}, listed as {m['labels']}"
    _check_bucket_bounds(dashboard, instance.registry, collectors, wanted)


def _bucket_bounds_queried(dashboard: dict[str, Any]) -> set[tuple[str, str]]:
    """(histogram family, le) for every ``NAME_bucket{...le="X"...}`` in the dashboard."""
    pairs = set()
    for t in _targets(dashboard):
        for name, matchers in re.findall(r"(wattgate_[a-z0-9_]+)_bucket\{([^}]*)\}", t["expr"]):
            pairs |= {(name, le) for le in re.findall(r'\ble="([^"]+)"', matchers)}
    return pairs


def _check_bucket_bounds(dashboard: dict[str, Any], registry: Any, collectors: dict[str, Any], wanted: Any) -> None:
    """An SLO panel's ``le="0.25"`` must be a bucket bound the histogram really has, or it shows nothing."""
    for name, le in _bucket_bounds_queried(dashboard):
        if name not in wanted:
            continue
        metric = collectors[name]
        child = metric.labels(*["probe"] * len(metric._labelnames)) if metric._labelnames else metric
        child.observe(0.0)
        bounds = {s.labels["le"] for fam in registry.collect() for s in fam.samples if s.name == name + "_bucket"}
        assert le in bounds, f'{name} has no bucket le="{le}"; its bounds are {sorted(bounds, key=float)}'
