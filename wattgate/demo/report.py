"""The demo's final report: requests answered, SLO attainment (client-measured and engine-modelled), energy
against the single-pool baseline (with ``--external``: the fixed-fleet baseline, the same engines at the highest
clock in one shared pool; both modelled), and every request written to ``requests.csv``."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattgate.demo.replay import Result, p99
from wattgate.demo.trace import Scheduled
from wattgate.planner.baselines import SINGLE_POOL_TP, single_pool
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.profiles.table import Profile

WINDOW_S = 10.0
CLIENT_SOURCE = "measured (client timers; the engines' latencies are emulated by the serving model)"
ENGINE_SOURCE = "modelled (the simulated engines' own TTFT and mean TBT of each request, from the serving model)"


SINGLE_POOL_SOURCE = "modelled (profile: one pool of TP{tp} instances at the highest clock, idle GPUs 70 W)"
FLEET_SOURCE = "modelled (profile: the same {n} external instances at the highest clock, one shared pool)"


@dataclass(frozen=True)
class Baseline:
    energy_j: float
    max_instances: int
    attainment: float  # modelled: share of requests whose type meets its targets at its window's load
    source: str = SINGLE_POOL_SOURCE.format(tp=SINGLE_POOL_TP)
    name: str = "single-pool baseline"  # or "fixed-fleet baseline" (demo --external): the word every line uses


def baseline(
    profile: Profile,
    sched: list[Scheduled],
    elapsed_s: float,
    slo: SloTargets,
    gpus: int,
    *,
    tp: int = SINGLE_POOL_TP,
) -> Baseline:
    """Modelled single-pool baseline (instances of ``tp`` GPUs) over ``elapsed_s`` wall seconds of the replay,
    window by window."""
    mix_counts = Counter(r.rtype for r in sched)
    mix = {t: c / max(1, len(sched)) for t, c in mix_counts.items()} or {RequestType.parse("MM"): 1.0}
    per_window: dict[int, Counter[RequestType]] = defaultdict(Counter)
    for r in sched:
        per_window[int(r.send_at_s // WINDOW_S)][r.rtype] += 1
    energy, most, attained = 0.0, 0, 0
    n_windows = max(1, math.ceil(elapsed_s / WINDOW_S), *(w + 1 for w in per_window))
    for w in range(n_windows):
        length = min(WINDOW_S, elapsed_s - w * WINDOW_S)
        counts = per_window.get(w, Counter())
        b = single_pool(profile, {t: c / WINDOW_S for t, c in counts.items()}, slo, gpus, mix, tp=tp)
        energy += b.power_w * max(0.0, length)
        most = max(most, b.instances)
        attained += sum(c for t, c in counts.items() if t in b.meets)
    return Baseline(energy, most, attained / max(1, len(sched)), SINGLE_POOL_SOURCE.format(tp=tp))


def fleet_baseline(
    profile: Profile, sched: list[Scheduled], elapsed_s: float, slo: SloTargets, fleet_tps: list[int]
) -> Baseline:
    """What a fixed fleet draws without wattgate (modelled), window by window: every instance (of the TPs in
    ``fleet_tps``) at the highest clock the profile measured for every type, one shared pool, each window's
    load spread over the instances in proportion to their GPUs; a type attains when its P99 at that load is
    within its targets on every instance."""
    per_window: dict[int, Counter[RequestType]] = defaultdict(Counter)
    for r in sched:
        per_window[int(r.send_at_s // WINDOW_S)][r.rtype] += 1
    gpus = sum(fleet_tps)
    energy, attained = 0.0, 0
    n_windows = max(1, math.ceil(elapsed_s / WINDOW_S), *(w + 1 for w in per_window))
    for w in range(n_windows):
        length = max(0.0, min(WINDOW_S, elapsed_s - w * WINDOW_S))
        counts = per_window.get(w, Counter())
        total = sum(counts.values()) / WINDOW_S
        mix = {t: c / sum(counts.values()) for t, c in counts.items()} if counts else {}
        power, meets = 0.0, set(mix)
        for tp in fleet_tps:
            types = [t for t in (mix or profile.request_types) if profile.covers(tp, t)]
            clock = min(profile.clocks(tp, t)[-1] for t in types)
            load = total * tp / gpus
            shares = mix or {t: 1.0 / len(types) for t in types}
            for t in types:
                p = profile.lookup(tp, clock, t, min(load, profile.max_measured_load(tp, clock, t)))
                power += shares[t] * p.power_w
                if not slo.met(t, p.ttft_p99_s, p.tbt_p99_s):
                    meets.discard(t)
            meets -= {t for t in mix if t not in types}
        energy += power * length
        attained += sum(c for t, c in counts.items() if t in meets)
    fleet = FLEET_SOURCE.format(n=len(fleet_tps))
    return Baseline(energy, len(fleet_tps), attained / max(1, len(sched)), fleet, "fixed-fleet baseline")


def meets_slo(r: Result, slo: SloTargets) -> bool:
    """Client-measured: the TTFT and mean time between tokens the client timed."""
    if not r.ok or r.ttft_s is None:
        return False
    return slo.met(r.req.rtype, r.ttft_s, r.tbt_s)


def engine_meets_slo(r: Result, slo: SloTargets) -> bool:
    """Engine-side: the emulated TTFT and mean TBT the engine reports for the request (modelled)."""
    ttft, tbt = r.engine.get("ttft_s"), r.engine.get("tbt_mean_s")
    if not r.ok or not isinstance(ttft, (int, float)):
        return False
    return slo.met(r.req.rtype, ttft, tbt if isinstance(tbt, (int, float)) else None)


def _group(results: list[Result], key: Callable[[Result], str], slo: SloTargets) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    out = {}
    for name, rs in sorted(groups.items()):
        engine_ttft = [float(r.engine["ttft_s"]) for r in rs if isinstance(r.engine.get("ttft_s"), (int, float))]
        out[name] = {
            "requests": len(rs),
            "slo_attainment": sum(meets_slo(r, slo) for r in rs) / len(rs),
            "engine_slo_attainment": sum(engine_meets_slo(r, slo) for r in rs) / len(rs),
            "ttft_p99_s": p99([r.ttft_s for r in rs if r.ttft_s is not None]),
            "engine_ttft_p99_s": p99(engine_ttft),
            "tbt_p99_s": p99([r.tbt_s for r in rs if r.tbt_s is not None]),
        }
    return out


def build_report(
    results: list[Result],
    *,
    scheduled: int,
    energy_j: float,
    base: Baseline,
    elapsed_s: float,
    client_lag: dict[str, Any] | None = None,
) -> dict[str, Any]:
    slo = SloTargets()
    answered = sum(r.ok for r in results)
    n = max(1, len(results))
    return {
        "requests": {
            "scheduled": scheduled,
            "answered": answered,
            "failed": len(results) - answered,
            "retried": sum(r.attempts > 1 for r in results),
            "errors": sorted({r.error for r in results if r.error})[:5],
        },
        "elapsed_s": elapsed_s,
        "slo": {
            "attainment": sum(meets_slo(r, slo) for r in results) / n,
            "source": CLIENT_SOURCE,
            "engine_attainment": sum(engine_meets_slo(r, slo) for r in results) / n,
            "engine_source": ENGINE_SOURCE,
            "by_type": _group(results, lambda r: r.req.rtype.name, slo),
            "by_pool": _group(results, lambda r: r.pool or "-", slo),
            "client_loop_lag": client_lag or {},
            "baseline": base.name,
            "baseline_attainment": base.attainment,
            "baseline_source": "modelled (profile P99 of each request's type at its 10 s window's load per baseline "
            "instance)",
        },
        "energy": {
            "wattgate_j": energy_j,
            "wattgate_source": "modelled (simulated GPUs' energy counters, from the serving model)",
            "baseline": base.name,
            "baseline_j": base.energy_j,
            "baseline_source": base.source,
            "baseline_max_instances": base.max_instances,
            "saving": 1.0 - energy_j / base.energy_j if base.energy_j > 0 else None,
        },
    }


def _ms(v: float | None, scale: float = 1000.0) -> str:
    return f"{v * scale:.0f}" if v is not None else "–"


def _rows(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"  {title:<5} requests  client  engine  TTFT p99 ms (client/engine)  TBT p99 ms"]
    for name, t in groups.items():
        lines.append(
            f"  {name:<5} {t['requests']:>8}  {100 * t['slo_attainment']:>5.1f}%"
            f"  {100 * t['engine_slo_attainment']:>5.1f}%"
            f"  {_ms(t['ttft_p99_s']):>12} / {_ms(t['engine_ttft_p99_s']):<12}  {_ms(t['tbt_p99_s']):>10}"
        )
    return lines


def render(rep: dict[str, Any]) -> str:
    q, e, s = rep["requests"], rep["energy"], rep["slo"]
    lag = s.get("client_loop_lag") or {}
    lines = [
        "",
        "=== wattgate demo report ===",
        f"requests: {q['answered']}/{q['scheduled']} answered, {q['failed']} failed, {q['retried']} retried, "
        f"over {rep['elapsed_s']:.0f} s",
        "SLO attainment (TTFT and mean TBT within the P99 targets):",
        f"  client:   {100 * s['attainment']:.1f}% ({s['source']})",
        f"  engine:   {100 * s['engine_attainment']:.1f}% ({s['engine_source']})",
        f"  {s.get('baseline', 'baseline')}: {100 * s['baseline_attainment']:.1f}% ({s['baseline_source']})",
    ]
    if lag.get("samples"):
        lines.append(
            f"  client event-loop lag: mean {lag['mean_s'] * 1000:.1f} ms, p99 {lag['p99_s'] * 1000:.1f} ms, "
            f"max {lag['max_s'] * 1000:.0f} ms (measured)"
        )
    lines += _rows("type", s["by_type"]) + _rows("pool", s["by_pool"])
    lines += [f"  error: {err}" for err in q["errors"]]
    saving = f"{100 * e['saving']:.1f}%" if e["saving"] is not None else "–"
    lines += [
        f"energy, wattgate:  {e['wattgate_j'] / 1000:,.1f} kJ  ({e['wattgate_source']})",
        f"energy, {e.get('baseline', 'baseline')}:  {e['baseline_j'] / 1000:,.1f} kJ  ({e['baseline_source']}, up to "
        f"{e['baseline_max_instances']} instance(s))",
        f"saving vs the {e.get('baseline', 'baseline')}: {saving} (modelled)",
    ]
    return "\n".join(lines)


def write_json(rep: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")


def write_requests_csv(results: list[Result], path: Path) -> None:
    """One row per request: the trace's figures, the client's timers (measured), the engine's (modelled)."""
    cols = ["send_at_s", "type", "input_tokens", "output_tokens", "ok", "pool", "instance", "attempts"]
    cols += ["client_ttft_s", "client_tbt_mean_s", "engine_ttft_s", "engine_tbt_mean_s", "engine_queue_s"]
    cols += ["engine_load_rps", "engine_sm_clock_mhz", "error"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in sorted(results, key=lambda r: r.req.send_at_s):
            e = r.engine
            w.writerow(
                [
                    f"{r.req.send_at_s:.3f}",
                    r.req.rtype.name,
                    r.req.input_tokens,
                    r.req.output_tokens,
                    int(r.ok),
                    r.pool,
                    r.instance,
                    r.attempts,
                    *(f"{v:.4f}" if v is not None else "" for v in (r.ttft_s, r.tbt_s)),
                    *(e.get(k, "") for k in ("ttft_s", "tbt_mean_s", "queue_s", "load_rps", "sm_clock_mhz")),
                    r.error,
                ]
            )
