"""The live dashboard: ``/dashboard`` (a static page) and ``/dashboard/data`` (JSON sampled every second).

The data are the gateway's own Prometheus series (requests, TTFT histograms: measured by its timers)
plus the energy booked per model (J/token, gCO2e: ``model_energy``) and, when Redis is configured, the
agents' node telemetry (GPU power and energy: measured by NVML or
modelled for simulated GPUs, as each reading says), the instance registry and the planner's plan
(predicted and baseline power: modelled). A sampler keeps the last ten minutes so a page opened late
still draws history.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wattgate.gateway.metrics import GatewayMetrics
from wattgate.planner.contract import IDLE_KEY, InstanceRecord, NodeTelemetry, Plan
from wattgate.profiles.classes import LengthClass, SloTargets

HISTORY_LEN = 600
_STATIC = resources.files("wattgate.gateway") / "static"
_ASSETS = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}


class ClusterReader(Protocol):
    async def read_cluster(self) -> tuple[list[NodeTelemetry], Plan | None, list[InstanceRecord]]: ...


def pool_counts(metrics: GatewayMetrics, slo: SloTargets) -> dict[str, dict[str, float]]:
    """Per pool: finished requests, errors, streams with a TTFT and those within the pool's TTFT target."""
    out: dict[str, dict[str, float]] = {}

    def cell(pool: str) -> dict[str, float]:
        return out.setdefault(pool, {"requests": 0.0, "errors": 0.0, "ttft_count": 0.0, "ttft_ok": 0.0})

    for family in metrics.registry.collect():
        for s in family.samples:
            pool = s.labels.get("pool", "")
            if s.name == "wattgate_gateway_requests_total" and pool:
                c = cell(pool)
                c["requests"] += s.value
                if not s.labels.get("status", "").startswith("2"):
                    c["errors"] += s.value
            elif s.name == "wattgate_gateway_ttft_seconds_count" and pool:
                cell(pool)["ttft_count"] += s.value
            elif s.name == "wattgate_gateway_ttft_seconds_bucket" and pool and len(pool) == 2:
                target = slo.ttft_p99_s[LengthClass(pool[0])]
                if abs(float(s.labels["le"]) - target) < 1e-9:
                    cell(pool)["ttft_ok"] += s.value
    return out


@dataclass
class Sampler:
    """Builds one snapshot per second and keeps a bounded history; ``snapshot()`` is what the page polls."""

    metrics: GatewayMetrics
    reader: ClusterReader | None
    slo: SloTargets = field(default_factory=SloTargets)
    history: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=HISTORY_LEN))
    latest: dict[str, Any] = field(default_factory=dict)
    _prev: tuple[float, float] | None = None
    energy_j: float = 0.0
    baseline_energy_j: float = 0.0

    async def sample(self, in_flight: dict[str, int], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        nodes, plan, records = await self.reader.read_cluster() if self.reader else ([], None, [])
        pools = pool_counts(self.metrics, self.slo)
        total = sum(p["requests"] for p in pools.values())
        rps = 0.0
        if self._prev is not None and now > self._prev[0]:
            dt = now - self._prev[0]
            rps = max(0.0, total - self._prev[1]) / dt
        node_rows = [_node_row(n) for n in nodes]
        power_w = sum(n["power_w"] for n in node_rows)
        baseline_w, baseline_kind = _baseline(plan)
        if self._prev is not None and node_rows:
            dt = min(now - self._prev[0], 5.0)
            self.energy_j += power_w * dt
            if baseline_w is not None:
                self.baseline_energy_j += baseline_w * dt
        self._prev = (now, total)
        point = {
            "t": now,
            "power_w": power_w,
            "node_power_w": {n["node"]: n["power_w"] for n in node_rows},
            "baseline_power_w": baseline_w,
            "rps": rps,
            "slo": {k: _attainment(v) for k, v in pools.items()},
        }
        self.history.append(point)
        self.latest = {
            "ts": now,
            "nodes": node_rows,
            "power_w": power_w,
            "power_source": sorted({g["source"] for n in node_rows for g in n["gpus"]}),
            "rps": rps,
            "requests": total,
            "pools": {k: {**v, "slo_attainment": _attainment(v)} for k, v in sorted(pools.items())},
            "instances": _instances(records, nodes, in_flight),
            "plan": _plan_row(plan),
            "energy": {
                "actual_j": self.energy_j,
                "baseline_j": self.baseline_energy_j,
                "saved_j": self.baseline_energy_j - self.energy_j,
                "source": "GPU power as each node reports it; baseline modelled by the planner",
                "baseline": baseline_kind,
            },
            "slo_ttft_s": {c.value: t for c, t in self.slo.ttft_p99_s.items()},
            "models": model_energy(self.metrics),  # energy per request, booked (README: Energy per request)
        }
        return self.latest

    def snapshot(self) -> dict[str, Any]:
        return {**self.latest, "history": list(self.history)}


def model_energy(metrics: GatewayMetrics) -> list[dict[str, Any]]:
    """Per model and source: the energy booked to its requests and its idle instances, their tokens, J/token
    (idle included) and gCO2e, from the gateway's energy counters (settled bookings)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            name = s.name.removeprefix("wattgate_gateway_").removesuffix("_total")
            if name not in {"energy_joules", "energy_tokens", "carbon_grams"}:
                continue
            cell = cells.setdefault((s.labels["model"], s.labels["source"]), {})
            field = "idle_j" if name == "energy_joules" and s.labels["key"] == IDLE_KEY else name
            cell[field] = cell.get(field, 0.0) + s.value
    rows = []
    for (model, source), c in sorted(cells.items()):
        energy = c.get("energy_joules", 0.0) + c.get("idle_j", 0.0)
        tokens = c.get("energy_tokens", 0.0)
        rows.append(
            {
                "model": model,
                "source": source,
                "energy_j": energy,
                "idle_j": c.get("idle_j", 0.0),
                "tokens": tokens,
                "j_per_token": energy / tokens if tokens else None,
                "carbon_g": c.get("carbon_grams", 0.0),
            }
        )
    return rows


def _attainment(cell: dict[str, float]) -> float | None:
    return cell["ttft_ok"] / cell["ttft_count"] if cell["ttft_count"] else None


def _node_row(n: NodeTelemetry) -> dict[str, Any]:
    gpus = [
        {
            "index": g.index,
            "power_w": g.power_w,
            "energy_j": g.energy_j,
            "sm_clock_mhz": g.sm_clock_mhz,
            "locked_clock_mhz": g.locked_clock_mhz,
            "source": g.source,
        }
        for g in n.gpus
    ]
    return {
        "node": n.node,
        "ts": n.ts,
        "power_w": sum(g.power_w for g in n.gpus),
        "energy_j": sum(g.energy_j for g in n.gpus),
        "gpus": gpus,
    }


def _instances(
    records: list[InstanceRecord], nodes: list[NodeTelemetry], in_flight: dict[str, int]
) -> list[dict[str, Any]]:
    clocks = {(n.node, g.index): g.sm_clock_mhz for n in nodes for g in n.gpus}
    rows = []
    for r in sorted(records, key=lambda r: (r.pool, r.id)):
        live = [clocks[(r.node, i)] for i in r.gpus if (r.node, i) in clocks]
        rows.append(
            {
                "id": r.id,
                "pool": r.pool,
                "node": r.node,
                "tp": r.tp,
                "gpus": r.gpus,
                "state": r.state,
                "sm_clock_mhz": min(live) if live else r.sm_clock_mhz,
                "in_flight": in_flight.get(r.id, 0),
            }
        )
    return rows


SINGLE_POOL = (
    "the single-pool baseline: one pool of TP8 instances (the largest TP a node holds) at max clock for the same "
    "load, 70 W per other GPU (modelled)"
)
EVERY_POOL_TP8 = "the multi-pool baseline: every pool on its own TP8 instances at max clock (modelled)"


def _baseline(plan: Plan | None) -> tuple[float | None, str | None]:
    """The baseline power the energy saved is counted against: the plan's single-pool baseline (plans from
    before it carry only the every-pool-on-TP8 one)."""
    if plan is None:
        return None, None
    if plan.single_pool_power_w is not None:
        return plan.single_pool_power_w, SINGLE_POOL
    return plan.baseline_power_w, EVERY_POOL_TP8


def _plan_row(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {
        "version": plan.version,
        "predicted_power_w": plan.predicted_power_w,
        "baseline_power_w": plan.baseline_power_w,  # the multi-pool baseline
        "single_pool_power_w": plan.single_pool_power_w,
        "forecast_rps": plan.forecast_rps,
        "gpus": sum(len(i.gpus) for i in plan.instances),
        "fixed": len(plan.fixed),  # servers wattgate does not manage, given a pool and clock by this plan
        "source": plan.source,
    }


async def run_sampler(sampler: Sampler, in_flight: Any, period_s: float = 1.0) -> None:
    """Sample forever; ``in_flight`` returns the live per-instance counts."""
    while True:
        await sampler.sample(in_flight())
        await asyncio.sleep(period_s)


async def dashboard_page(request: Request) -> Response:
    return Response((_STATIC / "dashboard.html").read_text(), media_type="text/html; charset=utf-8")


async def dashboard_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        return JSONResponse({"error": {"message": "not found", "type": "invalid_request_error"}}, status_code=404)
    return Response((_STATIC / name).read_text(), media_type=_ASSETS[name])


async def dashboard_data(request: Request) -> Response:
    sampler: Sampler = request.app.state.dashboard
    return JSONResponse(sampler.snapshot(), headers={"cache-control": "no-store"})
