"""The baselines wattgate is compared with (modelled from the profile): every pool on its own TP8 instances at
the highest measured clock, and DynamoLLM's single pool of the largest TP a node holds for the whole load."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wattgate.planner.model import Group
from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets
from wattgate.profiles.table import Profile

EPS = 1e-6


@dataclass(frozen=True)
class Baseline:
    """All pools on TP8 at the highest measured clock, each sized for its load (modelled)."""

    groups: tuple[Group, ...]
    unservable: tuple[str, ...]  # pools TP8 at max clock cannot serve within the SLO

    @property
    def power_w(self) -> float:
        return sum(g.power_w for g in self.groups)

    @property
    def gpus(self) -> int:
        return sum(g.gpus for g in self.groups)


def baseline(profile: Profile, demand_rps: Mapping[str, float], slo: SloTargets) -> Baseline:
    groups: list[Group] = []
    bad: list[str] = []
    for pool, rps in sorted(demand_rps.items()):
        if rps <= 0:
            continue
        rtype = RequestType.parse(pool)
        try:
            clock = profile.clocks(8, rtype)[-1]
            cap = profile.max_load(8, clock, rtype, slo)
        except ProfilesError:
            cap, clock = 0.0, 0
        if cap <= 0:
            bad.append(pool)
            continue
        count = math.ceil(rps / cap - EPS)
        each = rps / count
        groups.append(Group(pool, 8, clock, count, each, profile.lookup(8, clock, rtype, each).power_w))
    return Baseline(tuple(groups), tuple(bad))


SINGLE_POOL_TP = 8  # DynamoLLM's baseline TP, on 8-GPU nodes
IDLE_GPU_W = 70.0  # modelled: an idle H100 with a model loaded (as wattgate.agent.gpu.simulated draws)


def single_pool_tp(profile: Profile, node_gpus: Iterable[int]) -> int:
    """The single-pool baseline's TP: the largest the profile measured, up to ``SINGLE_POOL_TP``, that fits on
    the largest node (TP8 on 8-GPU nodes, TP4 on 4-GPU ones: a TP group never spans nodes)."""
    room = min(max(node_gpus, default=SINGLE_POOL_TP), SINGLE_POOL_TP)
    fits = [tp for tp in profile.tps if tp <= room]
    return max(fits) if fits else min(profile.tps)


@dataclass(frozen=True)
class SinglePool:
    """DynamoLLM's baseline (modelled): one pool of TP8 instances (the largest TP that fits a node) at the
    highest clock measured for every type, as few as carry the whole load mix within each type's targets,
    plus ``IDLE_GPU_W`` for each other GPU of the cluster."""

    instances: int
    clock_mhz: int
    power_w: float  # the instances at their load plus the cluster's other GPUs idle
    meets: frozenset[RequestType]  # types whose P99 at the per-instance load is within their targets
    tp: int = SINGLE_POOL_TP

    @property
    def gpus(self) -> int:
        return self.instances * self.tp


def single_pool(
    profile: Profile,
    loads: Mapping[RequestType, float],
    slo: SloTargets,
    gpus: int,
    mix: Mapping[RequestType, float] | None = None,
    *,
    tp: int = SINGLE_POOL_TP,
) -> SinglePool:
    """The single-pool baseline for ``loads`` (req/s per type) on a cluster of ``gpus`` with instances of ``tp``
    GPUs (``single_pool_tp``); with no load, one instance kept warm for ``mix`` (type shares). Types the
    profile did not measure at that TP are left out."""
    total = sum(v for v in loads.values() if v > 0)
    shares = {t: v / total for t, v in loads.items() if v > 0} if total > 0 else dict(mix or {})
    shares = {t: s for t, s in shares.items() if profile.covers(tp, t)}
    if not shares:
        return SinglePool(0, 0, gpus * IDLE_GPU_W, frozenset(), tp)
    clock = min(profile.clocks(tp, t)[-1] for t in shares)
    caps = {t: profile.max_load(tp, clock, t, slo) for t in shares}
    inverse = sum(s / caps[t] for t, s in shares.items() if caps[t] > 0)
    n = max(1, math.ceil(total * inverse - EPS))
    power, meets = 0.0, set()
    for t, s in shares.items():
        load = min(total / n, profile.max_measured_load(tp, clock, t))
        p = profile.lookup(tp, clock, t, load)
        power += s * p.power_w
        if slo.met(t, p.ttft_p99_s, p.tbt_p99_s):
            meets.add(t)
    idle = max(0, gpus - n * tp) * IDLE_GPU_W
    return SinglePool(n, clock, n * power + idle, frozenset(meets), tp)
