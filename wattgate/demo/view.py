"""The live terminal view: redrawn in place on a TTY, one status line every few seconds otherwise."""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import IO, Any

from wattgate.demo.replay import Progress


def bar(done: float, width: int = 30) -> str:
    filled = round(width * max(0.0, min(1.0, done)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def screen(d: dict[str, Any], p: Progress, elapsed_s: float, duration_s: float, url: str) -> str:
    """The full view from one dashboard snapshot and the replay's progress."""
    nodes = d.get("nodes") or []
    sources = ", ".join(d.get("power_source") or ["no telemetry yet"])
    lines = [
        f"wattgate demo   gateway {url}/v1   dashboard {url}/dashboard   (Ctrl-C stops)",
        f"{bar(elapsed_s / duration_s if duration_s else 1.0)} {elapsed_s:5.0f}/{duration_s:.0f} s   "
        f"sent {p.sent}/{p.total}   answered {p.done - p.failed}   failed {p.failed}   "
        f"requests/s {d.get('rps', 0.0):.2f} (measured)",
        f"GPU power {d.get('power_w', 0.0):,.0f} W ({sources})   "
        + "   ".join(f"{n['node']} {n['power_w']:,.0f} W" for n in nodes),
    ]
    plan = d.get("plan")
    if plan:
        single = plan.get("single_pool_power_w")
        versus = (
            f"single-pool baseline {single:,.0f} W"
            if single is not None
            else f"multi-pool baseline {plan['baseline_power_w']:,.0f} W"
        )
        lines.append(
            f"plan v{plan['version']}: {plan['gpus']} GPUs, predicted {plan['predicted_power_w']:,.0f} W vs {versus} "
            "(modelled)"
        )
    pools: dict[str, list[str]] = defaultdict(list)
    for i in d.get("instances") or []:
        clock = i.get("sm_clock_mhz")
        pools[i["pool"]].append(
            f"TP{i['tp']}@{clock if clock is not None else '?'}MHz{'' if i['state'] == 'ready' else ' ' + i['state']}"
        )
    lines.append("pool  SLO att.  requests  instances (TP @ clock)")
    stats = d.get("pools") or {}
    for name in sorted(set(pools) | set(stats)):
        st = stats.get(name, {})
        att = st.get("slo_attainment")
        att_s = f"{100 * att:6.1f}%" if att is not None else "     –"
        lines.append(f"{name:<5} {att_s}  {int(st.get('requests', 0)):>8}  {', '.join(pools.get(name, [])) or '–'}")
    return "\n".join(lines)


def status_line(d: dict[str, Any], p: Progress, elapsed_s: float, duration_s: float) -> str:
    inst = d.get("instances") or []
    return (
        f"[{elapsed_s:4.0f}/{duration_s:.0f} s] sent {p.sent}/{p.total} answered {p.done - p.failed} "
        f"failed {p.failed} | {d.get('rps', 0.0):.2f} req/s | power {d.get('power_w', 0.0):,.0f} W "
        f"({', '.join(d.get('power_source') or ['-'])}) | {len(inst)} instances"
    )


class View:
    """Writes the view to ``out``; in place (ANSI) on a terminal, periodic lines otherwise."""

    def __init__(self, out: IO[str] | None = None, line_every_s: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.line_every_s = line_every_s
        self._last_line = -1e9

    def update(self, d: dict[str, Any], p: Progress, elapsed_s: float, duration_s: float, url: str) -> None:
        if self.tty:
            self.out.write("\x1b[H\x1b[2J" + screen(d, p, elapsed_s, duration_s, url) + "\n")
        elif elapsed_s - self._last_line >= self.line_every_s:
            self._last_line = elapsed_s
            self.out.write(status_line(d, p, elapsed_s, duration_s) + "\n")
        self.out.flush()
