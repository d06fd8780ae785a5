"""The comparison: per-policy energy, power, GPU-hours, carbon, cost, latency percentiles, SLO attainment.

Every energy, power, carbon and latency figure is modelled (the serving model), never measured. A
request is within its targets when its TTFT and its time per output token (TPOT, the TBT target) are;
one never served counts as a miss. ``energy_vs_baseline`` is against ``single-pool`` (the iso-SLO
static TP8 pool), or against ``fixed-single-pool`` (the fixed fleet as one pool at the highest clock)
when that was replayed; ``energy_vs_oracle`` against ``oracle``; a policy that uses less energy than the
oracle at no lower attainment is flagged: the oracle is meant as a floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattgate.carbon import CarbonIntensity, constant
from wattgate.profiles.classes import REQUEST_TYPES, SloTargets
from wattgate.simulate.engine import Result

SOURCE = "modelled (serving model), not measured"


@dataclass(frozen=True)
class Prices:
    carbon: CarbonIntensity = field(default_factory=lambda: constant(400.0))  # a series: hourly from the start
    gpu_hour_price: float = 2.0
    energy_price_per_kwh: float = 0.10

    def carbon_kg(self, power_w: Sequence[float]) -> float:
        """Operational carbon of a per-second power series: each hour's energy at that hour's intensity."""
        total = 0.0
        for h in range(0, len(power_w), 3600):
            total += sum(power_w[h : h + 3600]) / 3.6e6 * self.carbon.at_hour(h // 3600)
        return total / 1e3


def within_slo(r: Result, slo: SloTargets) -> np.ndarray:
    """Per request: TTFT and TPOT within the targets of its true type (a request never served misses)."""
    ttft, tbt, types = np.asarray(r.ttft_s), np.asarray(r.tbt_s), np.asarray(r.types, dtype=int)
    if not len(types):
        return np.zeros(0, dtype=bool)
    ttft_max = np.array([slo.ttft_for(t) for t in REQUEST_TYPES])[types]
    tbt_ok = np.isnan(tbt) | (tbt <= slo.tbt_p99_s + 1e-9)
    ok: np.ndarray = (ttft <= ttft_max + 1e-9) & tbt_ok
    return ok


def _pct(x: np.ndarray, q: float) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.percentile(x, q, method="inverted_cdf")) if len(x) else None  # nearest rank: inf stays inf


def summarise(
    r: Result, slo: SloTargets, prices: Prices, baseline: Result | None, oracle: Result | None
) -> dict[str, Any]:
    kwh = r.energy_j / 3.6e6
    power = np.asarray(r.power_w)
    ttft, tbt, types = np.asarray(r.ttft_s), np.asarray(r.tbt_s), np.asarray(r.types, dtype=int)
    ok = within_slo(r, slo)
    per_type: dict[str, Any] = {}
    for i, t in enumerate(REQUEST_TYPES):
        m = types == i
        if not m.any():
            continue
        p99_ttft, p99_tbt = _pct(ttft[m], 99), _pct(tbt[m], 99)
        per_type[t.name] = {
            "requests": int(m.sum()),
            "ttft_p50_s": _pct(ttft[m], 50),
            "ttft_p99_s": p99_ttft,
            "tbt_p50_s": _pct(tbt[m], 50),
            "tbt_p99_s": p99_tbt,
            "slo_attainment": float(ok[m].mean()),
            "p99_within_slo": bool(
                p99_ttft is not None and p99_ttft <= slo.ttft_for(t) and (p99_tbt is None or p99_tbt <= slo.tbt_p99_s)
            ),
        }
    gpu_h = r.gpu_seconds / 3600.0
    attain = float(ok.mean()) if len(ok) else 1.0
    out: dict[str, Any] = {
        "policy": r.name,
        "requests": len(types),
        "duration_s": r.duration_s,
        "energy_kwh": kwh,
        "energy_vs_baseline": _vs(r, baseline),
        "energy_vs_oracle": _vs(r, oracle),
        "avg_power_kw": float(power.mean() / 1e3) if len(power) else 0.0,
        "peak_power_kw": float(power.max() / 1e3) if len(power) else 0.0,
        "gpu_hours": gpu_h,
        "avg_gpus_held": r.gpu_seconds / max(len(power), 1),
        "carbon_kg": prices.carbon_kg(r.power_w),
        "cost": gpu_h * prices.gpu_hour_price + kwh * prices.energy_price_per_kwh,
        "slo_attainment": attain,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tbt_p50_s": _pct(tbt, 50),
        "tbt_p99_s": _pct(tbt, 99),
        "types_p99_within_slo": sum(1 for v in per_type.values() if v["p99_within_slo"]),
        "per_type": per_type,
        "energy_by_pool_kwh": {p: j / 3.6e6 for p, j in sorted(r.energy_by_pool_j.items())},
        "reconfigurations": {
            "instance_starts": r.starts,
            "reshards": r.reshards,
            "instance_stops": r.stops,
            "clock_changes": r.clock_changes,
            "pool_changes": r.pool_changes,
            "wakes_from_standby": r.wakes,
            "reactive_adds": r.reactive_adds,
        },
        "forecast": {p: {"coverage": c, "bias": b, "judged": n} for p, (c, b, n) in sorted(r.forecast.items())},
        "requests_outside_their_pools": r.out_of_pool,
        "requests_unserved": r.unserved,
        "preemptions": r.preemptions,
        "instances_not_placed": r.unplaced,
        "replay_wall_s": r.wall_s,
        "beats_oracle": bool(
            oracle is not None
            and r.name != oracle.name
            and r.energy_j < oracle.energy_j
            and attain >= float(within_slo(oracle, slo).mean()) - 1e-9
        ),
        "notes": list(r.notes),
        "figures": SOURCE,
    }
    return out


def _vs(r: Result, ref: Result | None) -> float | None:
    return (r.energy_j / ref.energy_j - 1.0) if ref is not None and ref.energy_j else None


BASELINES = ("fixed-single-pool", "single-pool")  # what "vs base" compares with, the first one replayed
# each baseline's column and its name, the same words as plan, the demo, the dashboard and the README use
BASELINE_WORDS = {
    "single-pool": (
        "vs 1-pool",
        "the single-pool baseline (the single-pool policy: one iso-SLO pool of TP8 at max clock for every request "
        "type)",
    ),
    "fixed-single-pool": (
        "vs fleet",
        "the fixed-fleet baseline (the fixed-single-pool policy: the fixed fleet as one pool at the highest clock)",
    ),
}


def document(results: Sequence[Result], slo: SloTargets, prices: Prices, meta: dict[str, Any]) -> dict[str, Any]:
    by_name = {r.name: r for r in results}
    base = next((by_name[b] for b in BASELINES if b in by_name), None)
    oracle = by_name.get("oracle")
    return {
        "format": "wattgate-simulation",
        "version": 2,
        "figures": SOURCE + "; replay wall times measured",
        "baseline": base.name if base is not None else None,
        **meta,
        "prices": {
            "carbon_g_per_kwh": prices.carbon.hourly_g_per_kwh[0]
            if prices.carbon.constant
            else list(prices.carbon.hourly_g_per_kwh),
            "gpu_hour_price": prices.gpu_hour_price,
            "energy_price_per_kwh": prices.energy_price_per_kwh,
        },
        "policies": [summarise(r, slo, prices, base, oracle) for r in results],
    }


def table(doc: dict[str, Any]) -> str:
    w = max([20, *(len(p["policy"]) for p in doc["policies"])])
    column, against = BASELINE_WORDS.get(doc.get("baseline") or "single-pool", BASELINE_WORDS["single-pool"])
    head = (
        f"{'policy':<{w}} {'kWh':>8} {column:>9} {'vs orac':>8} {'avg kW':>7} {'GPUs':>6} {'CO2 kg':>7} "
        f"{'cost':>8} {'SLO ok':>7} {'P99 ok':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'TBT p50':>8} {'TBT p99':>8} "
        f"{'starts':>6} {'reshard':>7} {'clocks':>6}"
    )
    lines = [
        f"All energy, power, carbon and latency figures are {SOURCE}. {column}: energy against {against}.",
        head,
        "-" * len(head),
    ]
    for p in doc["policies"]:
        vs = "" if p["energy_vs_baseline"] is None else f"{p['energy_vs_baseline']:+.1%}"
        vo = "" if p["energy_vs_oracle"] is None else f"{p['energy_vs_oracle']:+.1%}"
        rc = p["reconfigurations"]
        flag = "  < oracle!" if p["beats_oracle"] else ""
        lines.append(
            f"{p['policy']:<{w}} {p['energy_kwh']:>8.2f} {vs:>9} {vo:>8} {p['avg_power_kw']:>7.1f} "
            f"{p['avg_gpus_held']:>6.1f} {p['carbon_kg']:>7.2f} {p['cost']:>8.2f} {p['slo_attainment']:>7.1%} "
            f"{p['types_p99_within_slo']:>4}/9 {_s(p['ttft_p50_s']):>9} {_s(p['ttft_p99_s']):>9} "
            f"{_s(p['tbt_p50_s'], 3):>8} {_s(p['tbt_p99_s'], 3):>8} {rc['instance_starts']:>6} {rc['reshards']:>7} "
            f"{rc['clock_changes']:>6}{flag}"
        )
    if doc.get("gpus"):
        lines.append(
            f"cluster: {doc['gpus']} GPUs, 8 per node ({doc.get('gpus_chosen', '--gpus')}); a GPU no instance holds "
            "draws 70 W, and counts in every policy's energy"
        )
    fleet = doc.get("fixed_fleet")
    if fleet:
        lines.append(
            f"fixed fleet: {fleet['instances']} on {fleet['gpus']} GPUs ({fleet['chosen']}); the fixed-* policies "
            f"never start or stop an instance, only move it between pools and lock its clock; '{column}' is "
            f"against {doc.get('baseline')}"
        )
    base = doc.get("single_pool")
    if base:
        reached = "" if base["reached_target"] else " (NOT reached: the best size found)"
        lines.append(
            f"single-pool: {base['instances']} x TP8 at max clock, sized iso-SLO for "
            f"{base['target']:.0%} of requests within their targets{reached}"
        )
    types = [t.name for t in REQUEST_TYPES]
    for label, key, fmt in (
        ("P50 TTFT (s)", "ttft_p50_s", "2"),
        ("P99 TTFT (s)", "ttft_p99_s", "2"),
        ("P99 TBT (s)", "tbt_p99_s", "3"),
        ("SLO attainment", "slo_attainment", "%"),
    ):
        lines.append("")
        lines.append(f"{label} per request type:")
        lines.append(f"{'policy':<{w}} " + " ".join(f"{t:>6}" for t in types))
        for p in doc["policies"]:
            cells = [f"{_cell(p['per_type'][t][key], fmt):>6}" if t in p["per_type"] else f"{'-':>6}" for t in types]
            lines.append(f"{p['policy']:<{w}} " + " ".join(cells))
    return "\n".join(lines)


def _cell(v: float | None, fmt: str) -> str:
    return f"{v:.1%}" if fmt == "%" and v is not None else _s(v, int(fmt) if fmt != "%" else 2)


def _s(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.{digits}f}"
