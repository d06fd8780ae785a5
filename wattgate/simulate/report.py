"""The comparison: per-policy energy, power, GPU-hours, carbon, cost, latency percentiles, SLO attainment.

Every energy, power, carbon and latency figure is modelled (the profile), never measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattgate.profiles.classes import REQUEST_TYPES, SloTargets
from wattgate.simulate.engine import Result

SOURCE = "modelled (profile), not measured"


@dataclass(frozen=True)
class Prices:
    carbon_g_per_kwh: float = 400.0
    gpu_hour_price: float = 2.0
    energy_price_per_kwh: float = 0.10
    carbon_hourly_g_per_kwh: tuple[float, ...] = ()  # a series, one value per hour from the start, cycled

    def carbon_kg(self, power_w: Sequence[float]) -> float:
        """Operational carbon of a per-second power series: each hour's energy at that hour's intensity."""
        if not self.carbon_hourly_g_per_kwh:
            return sum(power_w) / 3.6e6 * self.carbon_g_per_kwh / 1e3
        series = self.carbon_hourly_g_per_kwh
        total = 0.0
        for h in range(0, len(power_w), 3600):
            total += sum(power_w[h : h + 3600]) / 3.6e6 * series[(h // 3600) % len(series)]
        return total / 1e3


def summarise(r: Result, slo: SloTargets, prices: Prices, baseline: Result | None) -> dict[str, Any]:
    kwh = r.energy_j / 3.6e6
    power = np.asarray(r.power_w)
    ttft, tbt, types = np.asarray(r.ttft_s), np.asarray(r.tbt_s), np.asarray(r.types)
    ttft_max = np.array([slo.ttft_for(t) for t in REQUEST_TYPES])[types] if len(types) else np.zeros(0)
    ok = (ttft <= ttft_max + 1e-9) & (tbt <= slo.tbt_p99_s + 1e-9)
    per_type: dict[str, Any] = {}
    for i, t in enumerate(REQUEST_TYPES):
        m = types == i
        if not m.any():
            continue
        per_type[t.name] = {
            "requests": int(m.sum()),
            "ttft_p50_s": float(np.percentile(ttft[m], 50)),
            "ttft_p99_s": float(np.percentile(ttft[m], 99)),
            "tbt_p50_s": float(np.percentile(tbt[m], 50)),
            "tbt_p99_s": float(np.percentile(tbt[m], 99)),
            "slo_attainment": float(ok[m].mean()),
            "p99_within_slo": bool(
                np.percentile(ttft[m], 99) <= slo.ttft_for(t) and np.percentile(tbt[m], 99) <= slo.tbt_p99_s
            ),
        }
    gpu_h = r.gpu_seconds / 3600.0
    out: dict[str, Any] = {
        "policy": r.name,
        "requests": len(types),
        "duration_s": r.duration_s,
        "energy_kwh": kwh,
        "energy_vs_baseline": (kwh / (baseline.energy_j / 3.6e6) - 1.0) if baseline and baseline.energy_j else None,
        "avg_power_kw": float(power.mean() / 1e3) if len(power) else 0.0,
        "peak_power_kw": float(power.max() / 1e3) if len(power) else 0.0,
        "gpu_hours": gpu_h,
        "carbon_kg": prices.carbon_kg(r.power_w),
        "cost": gpu_h * prices.gpu_hour_price + kwh * prices.energy_price_per_kwh,
        "slo_attainment": float(ok.mean()) if len(ok) else 1.0,
        "ttft_p99_s": float(np.percentile(ttft, 99)) if len(ttft) else 0.0,
        "tbt_p99_s": float(np.percentile(tbt, 99)) if len(tbt) else 0.0,
        "per_type": per_type,
        "energy_by_pool_kwh": {p: j / 3.6e6 for p, j in sorted(r.energy_by_pool_j.items())},
        "reconfigurations": {
            "instance_starts": r.starts,
            "reshards": r.reshards,
            "instance_stops": r.stops,
            "clock_changes": r.clock_changes,
        },
        "requests_outside_their_pools": r.out_of_pool,
        "instances_not_placed": r.unplaced,
        "replay_wall_s": r.wall_s,
        "figures": SOURCE,
    }
    return out


def document(results: Sequence[Result], slo: SloTargets, prices: Prices, meta: dict[str, Any]) -> dict[str, Any]:
    base = next((r for r in results if r.name == "single-pool"), None)
    return {
        "format": "wattgate-simulation",
        "version": 1,
        "figures": SOURCE + "; replay wall times measured",
        **meta,
        "prices": {
            "carbon_g_per_kwh": list(prices.carbon_hourly_g_per_kwh) or prices.carbon_g_per_kwh,
            "gpu_hour_price": prices.gpu_hour_price,
            "energy_price_per_kwh": prices.energy_price_per_kwh,
        },
        "policies": [summarise(r, slo, prices, base) for r in results],
    }


def table(doc: dict[str, Any]) -> str:
    head = (
        f"{'policy':<12} {'kWh':>8} {'vs 1-pool':>9} {'avg kW':>7} {'peak kW':>8} {'GPU-h':>7} {'CO2 kg':>7} "
        f"{'cost':>8} {'SLO ok':>7} {'TTFT p99':>9} {'TBT p99':>8} {'starts':>6} {'reshard':>7} {'clocks':>6}"
    )
    lines = [
        f"All energy, power, carbon and latency figures are {SOURCE}. vs 1-pool: energy against the single-pool "
        "baseline (the single-pool policy: one pool of TP8 at max clock for every request type).",
        head,
        "-" * len(head),
    ]
    for p in doc["policies"]:
        vs = "" if p["energy_vs_baseline"] is None else f"{p['energy_vs_baseline']:+.0%}"
        rc = p["reconfigurations"]
        lines.append(
            f"{p['policy']:<12} {p['energy_kwh']:>8.2f} {vs:>9} {p['avg_power_kw']:>7.1f} {p['peak_power_kw']:>8.1f} "
            f"{p['gpu_hours']:>7.1f} {p['carbon_kg']:>7.2f} {p['cost']:>8.2f} {p['slo_attainment']:>7.1%} "
            f"{p['ttft_p99_s']:>9.2f} {p['tbt_p99_s']:>8.3f} {rc['instance_starts']:>6} {rc['reshards']:>7} "
            f"{rc['clock_changes']:>6}"
        )
    lines.append("")
    lines.append("P99 TTFT (s) per request type:")
    types = [t.name for t in REQUEST_TYPES]
    lines.append(f"{'policy':<12} " + " ".join(f"{t:>6}" for t in types))
    for p in doc["policies"]:
        cells = [f"{p['per_type'][t]['ttft_p99_s']:>6.2f}" if t in p["per_type"] else f"{'-':>6}" for t in types]
        lines.append(f"{p['policy']:<12} " + " ".join(cells))
    return "\n".join(lines)
