"""The demo's final report: requests answered, SLO attainment (measured), energy against the single-pool baseline."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattgate.demo.replay import Result
from wattgate.demo.trace import Scheduled
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.profiles.table import Profile

BASELINE_TP = 8
IDLE_POWER_W = 70.0  # an idle simulated H100, as wattgate.agent.gpu.simulated models it
WINDOW_S = 10.0


@dataclass(frozen=True)
class BaselineWindow:
    instances: int
    power_w: float


def baseline_window(
    profile: Profile, loads: dict[RequestType, float], mix: dict[RequestType, float], slo: SloTargets, gpus: int
) -> BaselineWindow:
    """One pool of TP8 instances at the highest clock, as few as carry ``loads`` within the SLOs; idle GPUs at 70 W."""
    total = sum(loads.values())
    shares = {t: v / total for t, v in loads.items()} if total > 0 else mix
    clock = min(profile.clocks(BASELINE_TP, t)[-1] for t in shares)  # highest clock measured for every type
    inverse = sum(s / max(profile.max_load(BASELINE_TP, clock, t, slo), 1e-9) for t, s in shares.items())
    capacity = 1.0 / inverse if inverse > 0 else math.inf
    n = max(1, math.ceil(total / capacity - 1e-9))
    per = total / n
    power = 0.0
    for t, s in shares.items():
        load = min(per, profile.max_measured_load(BASELINE_TP, clock, t))
        power += s * profile.lookup(BASELINE_TP, clock, t, load).power_w
    idle = max(0, gpus - n * BASELINE_TP) * IDLE_POWER_W
    return BaselineWindow(n, n * power + idle)


def baseline_energy_j(
    profile: Profile, sched: list[Scheduled], elapsed_s: float, slo: SloTargets, gpus: int
) -> tuple[float, int]:
    """Modelled baseline energy over ``elapsed_s`` wall seconds of the replay, window by window."""
    mix_counts = Counter(r.rtype for r in sched)
    mix = {t: c / max(1, len(sched)) for t, c in mix_counts.items()} or {RequestType.parse("MM"): 1.0}
    per_window: dict[int, Counter[RequestType]] = defaultdict(Counter)
    for r in sched:
        per_window[int(r.send_at_s // WINDOW_S)][r.rtype] += 1
    energy, most = 0.0, 0
    n_windows = max(1, math.ceil(elapsed_s / WINDOW_S))
    for w in range(n_windows):
        length = min(WINDOW_S, elapsed_s - w * WINDOW_S)
        loads = {t: c / WINDOW_S for t, c in per_window.get(w, Counter()).items()}
        b = baseline_window(profile, loads, mix, slo, gpus)
        energy += b.power_w * max(0.0, length)
        most = max(most, b.instances)
    return energy, most


def meets_slo(r: Result, slo: SloTargets) -> bool:
    if not r.ok or r.ttft_s is None:
        return False
    return r.ttft_s <= slo.ttft_p99_s[r.req.rtype.input] and (r.tbt_s is None or r.tbt_s <= slo.tbt_p99_s)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def build_report(
    results: list[Result], *, scheduled: int, energy_j: float, baseline_j: float, baseline_max: int, elapsed_s: float
) -> dict[str, Any]:
    slo = SloTargets()
    by_type: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_type[r.req.rtype.name].append(r)
    types = {}
    for name, rs in sorted(by_type.items()):
        types[name] = {
            "requests": len(rs),
            "slo_attainment": sum(meets_slo(r, slo) for r in rs) / len(rs),
            "ttft_p99_s": p99([r.ttft_s for r in rs if r.ttft_s is not None]),
            "tbt_p99_s": p99([r.tbt_s for r in rs if r.tbt_s is not None]),
        }
    answered = sum(r.ok for r in results)
    return {
        "requests": {
            "scheduled": scheduled,
            "answered": answered,
            "failed": len(results) - answered,
            "errors": sorted({r.error for r in results if r.error})[:5],
        },
        "elapsed_s": elapsed_s,
        "slo": {
            "attainment": sum(meets_slo(r, slo) for r in results) / max(1, len(results)),
            "by_type": types,
            "source": "measured (client timers; the engines' latencies are emulated from the profile)",
        },
        "energy": {
            "wattgate_j": energy_j,
            "wattgate_source": "modelled (simulated GPUs' energy counters, from the profile)",
            "baseline_j": baseline_j,
            "baseline_source": "modelled (profile: one pool of TP8 instances at the highest clock, idle GPUs 70 W)",
            "baseline_max_instances": baseline_max,
            "saving": 1.0 - energy_j / baseline_j if baseline_j > 0 else None,
        },
    }


def render(rep: dict[str, Any]) -> str:
    q, e, s = rep["requests"], rep["energy"], rep["slo"]
    lines = [
        "",
        "=== wattgate demo report ===",
        f"requests: {q['answered']}/{q['scheduled']} answered, {q['failed']} failed, over {rep['elapsed_s']:.0f} s",
        f"SLO attainment (TTFT and TBT vs P99 targets, measured): {100 * s['attainment']:.1f}%",
        "  type  requests  attained  TTFT p99  TBT p99",
    ]
    for name, t in s["by_type"].items():
        ttft = f"{t['ttft_p99_s']:.3f} s" if t["ttft_p99_s"] is not None else "–"
        tbt = f"{t['tbt_p99_s'] * 1000:.0f} ms" if t["tbt_p99_s"] is not None else "–"
        lines.append(f"  {name:<5} {t['requests']:>8}  {100 * t['slo_attainment']:>7.1f}%  {ttft:>8}  {tbt:>7}")
    lines += [f"  error: {err}" for err in q["errors"]]
    saving = f"{100 * e['saving']:.1f}%" if e["saving"] is not None else "–"
    lines += [
        f"energy, wattgate:  {e['wattgate_j'] / 1000:,.1f} kJ  ({e['wattgate_source']})",
        f"energy, baseline:  {e['baseline_j'] / 1000:,.1f} kJ  ({e['baseline_source']}, up to "
        f"{e['baseline_max_instances']} instance(s))",
        f"saving: {saving} (modelled)",
    ]
    return "\n".join(lines)


def write_json(rep: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
