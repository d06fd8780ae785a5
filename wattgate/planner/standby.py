"""Warm standby in the plan: which instances a shrinking plan keeps asleep (vLLM sleep mode) instead of stopping.

Pure. A managed instance the previous plan ran and the new placement drops is kept on standby
(``PlannedInstance.standby``: same id, pool, node, GPUs, TP and clock, no load, its sleeping power) when

- its node's agent can put engines to sleep (``Heartbeat.sleep_mode``),
- its pool ``may need it``: the caller's forecast of the pool's peak over a longer horizon (until the instance
  would next be reconsidered) is above the load this plan was sized for,
- none of its GPUs is planned for another instance (a plan never waits for a sleeper's GPUs), and
- it has not been asleep ``max_s`` or longer already (past that, its idle power costs more than a cold start
  would; the planner stops it).

A later plan that wants an instance of that pool and TP again keeps it (placement prefers instances that
serve, then standby ones), planned active: its agent wakes it in seconds instead of a cold start.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from wattgate.planner.contract import PlannedInstance

DEFAULT_STANDBY_MAX_S = 240.0  # as the replay's STANDBY_MAX_S: a sleeper past this costs more than a restart


def keep_asleep(
    previous: Sequence[PlannedInstance],
    placed: Sequence[PlannedInstance],
    *,
    sleep_nodes: Collection[str],
    may_need: Collection[str],
    asleep_since: Mapping[str, float],
    now: float,
    max_s: float,
    sleeping_power_w: Callable[[PlannedInstance], float],
) -> tuple[PlannedInstance, ...]:
    """The standby instances to add to a plan whose managed instances are ``placed``.

    ``previous``: the previous plan's managed instances (fixed ones excluded by the caller); ``may_need``: the
    pools whose longer forecast says the capacity may come back; ``asleep_since``: instance id -> when it was
    first planned on standby (``now`` for one not in it)."""
    if max_s <= 0:
        return ()
    kept = {p.id for p in placed}
    taken = {(p.node, g) for p in placed for g in p.gpus}
    out: list[PlannedInstance] = []
    for p in sorted(previous, key=lambda i: i.id):
        gpus = {(p.node, g) for g in p.gpus}
        if (
            p.id in kept
            or p.node not in sleep_nodes
            or p.pool not in may_need
            or gpus & taken
            or now - asleep_since.get(p.id, now) >= max_s
        ):
            continue
        taken |= gpus
        out.append(replace(p, load_rps=0.0, power_w=round(sleeping_power_w(p), 1), standby=True))
    return tuple(out)
