"""Turning a decision into a publishable ``Plan`` with its reasons, and a plan back into running counts.

Pure. Every power figure in the reasons is modelled from the profile and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wattgate.planner.baselines import IDLE_GPU_W, Baseline, SinglePool
from wattgate.planner.contract import PLAN_REVISION, Plan, PlannedInstance
from wattgate.planner.model import Config, Decision
from wattgate.planner.placement import Placement


def build_plan(
    decision: Decision,
    placement: Placement,
    base: Baseline,
    *,
    version: int,
    created_at: float,
    model: str,
    headroom: float = 1.0,
    single: SinglePool | None = None,
    fixed: Sequence[PlannedInstance] = (),
    left_out: Sequence[str] = (),
    standby: Sequence[PlannedInstance] = (),
) -> Plan:
    """The plan to publish; ``fixed``: the fixed instances with the pool and clock the decision gives them,
    ``left_out``: fixed instances it gives nothing (an alert), ``standby``: instances kept asleep (their
    sleeping power counts in the predicted power)."""
    alerts = list(decision.alerts)
    extra = []
    if single is not None:
        extra.append(
            f"single-pool baseline: {single.instances} x TP{single.tp} @ {single.clock_mhz} MHz for the whole load "
            f"plus {IDLE_GPU_W:.0f} W per other GPU: {single.power_w:.0f} W (modelled)"
        )
    if left_out:
        alerts.append(
            f"fixed instance(s) {', '.join(left_out)}: the profile has no operating point for their TP; "
            "they keep the pool and clock they have"
        )
    if placement.unplaced:
        alerts.append(f"{placement.unplaced} planned instance(s) found no free GPUs on the nodes and are left out")
    if base.unservable:
        alerts.append(
            f"the multi-pool baseline (TP8 at max clock) cannot meet the SLO for {', '.join(base.unservable)}"
        )
    instances = [*placement.instances, *standby, *fixed]
    extra += [
        f"{p.id} ({p.pool}, TP{p.tp}, {p.node} GPUs {list(p.gpus)}) on warm standby: asleep, not routed, "
        f"{p.power_w:.0f} W (modelled); woken in seconds if a plan needs its pool again"
        for p in standby
    ]
    return Plan(
        version=version,
        created_at=created_at,
        model=model,
        instances=instances,
        forecast_rps={k: round(v, 4) for k, v in decision.demand_rps.items()},
        predicted_power_w=round(sum(i.power_w for i in instances), 1),
        baseline_power_w=round(base.power_w, 1),
        reasons=[
            *reasons(decision, placement, base),
            f"instances rated at {headroom:.0%} of their SLO-feasible capacity (headroom for bursts)",
            *extra,
        ],
        alerts=alerts,
        serves=serves(decision),
        headroom=headroom,
        single_pool_power_w=None if single is None else round(single.power_w, 1),
        single_pool_gpus=None if single is None else single.gpus,
        fixed=sorted(i.id for i in fixed),
        revision=PLAN_REVISION,
    )


def serves(decision: Decision) -> dict[str, list[str]]:
    """Pool -> the request types it serves (its own first), from the decision's flows."""
    return serves_of(decision.flows_rps)


def serves_of(flows_rps: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Pool -> the request types it serves (its own first), from flows (demand pool -> serving pool -> req/s)."""
    out: dict[str, set[str]] = {}
    for r, by in flows_rps.items():
        for q, rps in by.items():
            if rps > 0:
                out.setdefault(q, set()).add(r)
    return {q: sorted(types, key=lambda t: (t != q, t)) for q, types in sorted(out.items())}


def reasons(decision: Decision, placement: Placement, base: Baseline) -> list[str]:
    out = [
        f"solver: {decision.status.value} in {decision.solve_time_s * 1000:.0f} ms (measured)",
        "forecast peak load (req/s): " + ", ".join(f"{p}={v:.2f}" for p, v in sorted(decision.demand_rps.items())),
    ]
    for g in decision.groups:
        out.append(
            f"{g.pool}: {g.count} x TP{g.tp} @ {g.clock_mhz} MHz, {g.load_rps_each:.2f} req/s each, "
            f"{g.power_w_each:.0f} W each (modelled)"
        )
    for g in decision.fixed_groups:
        out.append(
            f"{g.pool}: {g.count} fixed x TP{g.tp} @ {g.clock_mhz} MHz, {g.load_rps_each:.2f} req/s each, "
            f"{g.power_w_each:.0f} W each (modelled; servers wattgate does not manage: pool and clock only)"
        )
    for r, by in sorted(decision.flows_rps.items()):
        for q, rps in sorted(by.items()):
            if q != r:
                out.append(f"{r} spills {rps:.2f} req/s to {q} (cheaper than instances of its own)")
    saving = base.power_w - decision.power_w
    pct = 100 * saving / base.power_w if base.power_w else 0.0
    out.append(
        f"predicted power {decision.power_w:.0f} W vs {base.power_w:.0f} W for the multi-pool baseline (each type "
        f"its own TP8 instances at max clock): saving {saving:.0f} W ({pct:.0f}%) (modelled)"
    )
    fixed = sum(g.count for g in decision.fixed_groups)
    also = f"; {fixed} fixed instance(s) on {sum(g.gpus for g in decision.fixed_groups)} GPUs" if fixed else ""
    out.append(
        f"GPUs {decision.gpus_used}/{decision.gpu_budget}; {placement.started} to start, {placement.kept} kept{also}"
    )
    return out


def running_counts(instances: list[PlannedInstance]) -> dict[Config, int]:
    out: dict[Config, int] = {}
    for i in instances:
        key = (i.pool, i.tp, i.sm_clock_mhz)
        out[key] = out.get(key, 0) + 1
    return out


SINGLE_POOL_BASELINE = (
    f"single-pool baseline: one pool of TP8 instances (the largest TP a node holds) at the highest clock serving "
    f"every request type, as few as "
    f"carry the load within the SLOs, plus {IDLE_GPU_W:.0f} W for each other GPU of the cluster (modelled)"
)
MULTI_POOL_BASELINE = (
    "multi-pool baseline: each request type its own pool of TP8 instances at the highest clock, sized for its "
    "load (modelled)"
)


def decision_summary(decision: Decision, base: Baseline, single: SinglePool | None = None) -> dict[str, Any]:
    """The JSON form ``wattgate plan --json`` prints: the plan, both baselines and the saving against each.

    Against the single-pool baseline wattgate's power counts the cluster's GPUs outside its instances idle at
    ``IDLE_GPU_W``, as that baseline does; against the multi-pool baseline, its instances alone (as that one).
    """
    idle_w = max(0, decision.gpu_budget - decision.gpus_used) * IDLE_GPU_W
    out: dict[str, Any] = {
        "status": decision.status.value,
        "solve_time_s": round(decision.solve_time_s, 4),
        "solve_time_source": "measured",
        "gpu_budget": decision.gpu_budget,
        "gpus_used": decision.gpus_used,
        "demand_rps": decision.demand_rps,
        "flows_rps": decision.flows_rps,
        "unserved_rps": decision.unserved_rps,
        "pools": [_group(g) for g in decision.groups],
        "predicted_power_w": round(decision.power_w, 1),
        "predicted_cluster_power_w": round(decision.power_w + idle_w, 1),
        "multi_pool_baseline": {
            "definition": MULTI_POOL_BASELINE,
            "pools": [_group(g) for g in base.groups],
            "gpus": base.gpus,
            "power_w": round(base.power_w, 1),
            "unservable": list(base.unservable),
        },
        "power_source": "modelled",
        "alerts": list(decision.alerts),
    }
    savings = {"vs_multi_pool_baseline": _saving(decision.power_w, base.power_w)}
    if single is not None:
        out["single_pool_baseline"] = {
            "definition": SINGLE_POOL_BASELINE,
            "instances": single.instances,
            "tp": single.tp,
            "sm_clock_mhz": single.clock_mhz,
            "gpus": single.gpus,
            "power_w": round(single.power_w, 1),
        }
        savings["vs_single_pool_baseline"] = _saving(decision.power_w + idle_w, single.power_w)
    out["saving"] = savings
    return out


def _saving(power_w: float, baseline_w: float) -> float | None:
    return round(1.0 - power_w / baseline_w, 4) if baseline_w > 0 else None


def _group(g: Any) -> dict[str, Any]:
    return {
        "pool": g.pool,
        "count": g.count,
        "tp": g.tp,
        "sm_clock_mhz": g.clock_mhz,
        "load_rps_each": round(g.load_rps_each, 4),
        "power_w_each": round(g.power_w_each, 1),
    }
