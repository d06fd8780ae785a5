"""PNG plots of a comparison: cluster power over time per policy, SLO attainment, energy by pool (modelled)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wattgate.simulate.engine import Result


def write_plots(out: Path, results: Sequence[Result], doc: dict[str, Any]) -> list[Path]:
    import matplotlib  # noqa: PLC0415 (lazy: half a second of import, paid only with --out)

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in results:
        per_min = [sum(r.power_w[i : i + 60]) / len(r.power_w[i : i + 60]) / 1e3 for i in range(0, len(r.power_w), 60)]
        ax.plot([i for i in range(len(per_min))], per_min, label=r.name)
    ax.set_xlabel("minute")
    ax.set_ylabel("cluster power, kW (modelled)")
    ax.set_title("Cluster power over time (one-minute averages, modelled by the serving model)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "power.png"))
    names = [p["policy"] for p in doc["policies"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, [100 * p["slo_attainment"] for p in doc["policies"]], color="tab:green")
    ax.set_ylabel("requests within their SLO, % (modelled)")
    ax.set_ylim(0, 100)
    ax.set_title("SLO attainment")
    ax.tick_params(axis="x", rotation=30)
    paths.append(_save(fig, out / "slo.png"))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    pools = sorted({k for p in doc["policies"] for k in p["energy_by_pool_kwh"]})
    bottom = [0.0] * len(names)
    for pool in pools:
        vals = [p["energy_by_pool_kwh"].get(pool, 0.0) for p in doc["policies"]]
        ax.bar(names, vals, bottom=bottom, label="single pool" if pool == "*" else pool)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("energy, kWh (modelled)")
    ax.set_title("Energy by pool")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "energy_by_pool.png"))
    plt.close("all")
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
