"""Instances as the router sees them, and the pure choice of the instance a request goes to.

A request's pool comes from the prediction; its candidates are the ready, healthy, non-ejected
instances serving its model in that pool (or in any pool, for instances without one), below their
concurrency bound. The least outstanding work wins: tokens in flight (input plus expected output),
then request count, each divided by the instance's weight (its planned load relative to its pool's
mean, ``plan_weights``). A request type goes first to the pool(s) the planner's current plan sends it
to (``Plan.serves``, made into ``Routes`` by ``plan_routes``); when there is no plan, or those pools
have no instance that can take it (none ready, or all at their concurrency bound), the pools of
``spill_chain`` are tried in order. Admission (``plan_limits``): with a plan, an instance holding as many
requests as its planned load brings in over the admission window (Little's law) is full, and a request
whose pools' instances are all full goes to the next pool of its route that has one with room; only when
every pool of the route is full does it queue where it would have without admission (the least loaded
instance of the first pool that has one), unless work-conserving spill is on (``spill_any``): then it goes to
the instance with room of any pool, the least full (in flight over its limit) first, rather than queue behind a
full route while other pools' instances stand idle. When nothing routable can take it, pools in panic (too few of their
instances routable) offer their ejected and probe-failing instances too (``choose``). Passive ejection
(``record_failure``, Envoy's outlier detection): a connect error ejects an instance at once, other
failures after a run of them, for a cooldown, unless the pool's ejection cap says no.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from wattgate.classifier.api import Prediction, choose_output_class
from wattgate.profiles.classes import REQUEST_TYPES, ClassEdges, LengthClass, ProfilesError, RequestType, spill_chain

Routes = Mapping[str, tuple[str, ...]]  # request type name -> the pools to try, in order


@dataclass(frozen=True)
class InstanceSpec:
    """What config or the registry says about an instance (replaced whole when it changes)."""

    id: str
    base_url: str
    models: frozenset[str]  # empty: not known yet (static backend still being asked)
    pool: str | None  # None: serves every pool
    max_concurrency: int
    api_key: str | None
    source: str  # "static" or "registry"
    ready: bool = True
    health_path: str = "/health"


class Instance:
    """An instance plus the gateway's live view of it: work in flight and health."""

    __slots__ = (
        "consecutive_failures",
        "ejected_until",
        "healthy",
        "in_flight",
        "limit",
        "outstanding_tokens",
        "spec",
        "weight",
    )

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.in_flight = 0
        self.outstanding_tokens = 0
        self.healthy = True  # from active probing
        self.ejected_until = 0.0  # from passive ejection
        self.consecutive_failures = 0
        # its share of its pool's work: the plan's load for it over the pool's mean (1.0 without a plan), so a
        # TP4 instance planned for 2 req/s gets twice the work of a TP2 one planned for 1 req/s
        self.weight = 1.0
        # requests in flight above which it is full for admission (``plan_limits``; inf: no plan, or admission off)
        self.limit = math.inf

    @property
    def id(self) -> str:
        return self.spec.id

    def routable(self, now: float) -> bool:
        return self.spec.ready and self.healthy and now >= self.ejected_until

    def serves(self, model: str) -> bool:
        return model in self.spec.models

    def __repr__(self) -> str:
        return f"Instance({self.spec.id}, in_flight={self.in_flight}, tokens={self.outstanding_tokens})"


def request_type(pred: Prediction, edges: ClassEdges) -> RequestType:
    return RequestType(edges.input_class(pred.input_tokens), choose_output_class(pred.output_probs))


def expected_output_tokens(pred: Prediction, edges: ClassEdges, max_tokens: int | None) -> int:
    """Modelled: the predictor's expected output tokens (the mean of its length distribution for the served
    model, capped by max_tokens) when it gives one; else probability-weighted class midpoints (L counts as
    twice the M edge), capped by max_tokens."""
    if pred.expected_output_tokens is not None:
        value = round(pred.expected_output_tokens)
        return max(1, min(value, max_tokens) if max_tokens else value)
    s_mid = edges.output_short_max / 2
    m_mid = (edges.output_short_max + edges.output_medium_max) / 2
    l_mid = 2 * edges.output_medium_max
    p_s, p_m, p_l = pred.output_probs
    value = int(p_s * s_mid + p_m * m_mid + p_l * l_mid)
    return max(1, min(value, max_tokens) if max_tokens else value)


def plan_routes(serves: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Request type -> pools to try: the plan's pools for it (``serves``: pool -> types it serves), then
    its spill chain. Types the plan does not mention, and unknown names, keep the spill chain alone."""
    planned: dict[str, list[str]] = {}
    for pool, types in sorted(serves.items()):
        for t in types:
            try:
                pool_name, type_name = RequestType.parse(pool).name, RequestType.parse(t).name
            except ProfilesError:
                continue  # a name this gateway does not know: nothing is routed by it
            with_pool = planned.setdefault(type_name, [])
            if pool_name not in with_pool:
                with_pool.append(pool_name)
    out: dict[str, tuple[str, ...]] = {}
    for rtype in REQUEST_TYPES:
        first = planned.get(rtype.name, [])
        if first:
            out[rtype.name] = (*first, *(p for p in pools_for(rtype) if p not in first))
    return out


def choose(  # noqa: PLR0917  (the proxy passes them positionally on its hot path)
    instances: Iterable[Instance],
    model: str,
    rtype: RequestType | None,
    now: float,
    exclude: AbstractSet[str] = frozenset(),
    routes: Routes | None = None,
    panic_below: float = 0.0,
    spill_any: bool = False,
) -> tuple[Instance, str] | None:
    """The instance to use and the pool it serves the request as, or None when nothing can take it.

    ``rtype`` None (embeddings) ignores pools. ``routes`` (from ``plan_routes``) puts the plan's pools
    for the type first; without it, or for a type it does not list, the spill chain alone is used.
    Panic (``panic_below`` > 0, Envoy's healthy panic threshold): when no routable instance can take
    it, a pool with fewer than that share of its ready instances routable offers its ejected and
    probe-failing instances too, as Envoy routes to every host of a cluster in panic: ejections and
    probes that wrongly condemn most of a pool must not refuse everyone. ``spill_any`` (work-conserving
    spill): when no pool of the route has an instance with room, the least full instance with room of any
    pool takes it (only routable ones: never an instance asleep, draining, starting or ejected).
    """
    ready = [i for i in instances if i.spec.ready and i.serves(model)]
    usable = [i for i in ready if i.routable(now) and i.in_flight < i.spec.max_concurrency and i.id not in exclude]
    picked = pick(usable, rtype, routes, spill_any)
    if picked is not None or panic_below <= 0:
        return picked
    panicking = _panicking_pools(ready, now, panic_below)
    if not panicking:
        return None
    spare = [
        i
        for i in ready
        if i.spec.pool in panicking
        and not i.routable(now)
        and i.in_flight < i.spec.max_concurrency
        and i.id not in exclude
    ]
    return pick(spare, rtype, routes, spill_any)


def by_pool(usable: Iterable[Instance]) -> dict[str | None, list[Instance]]:
    """``usable`` grouped by pool (None: instances without one), each group in ``usable``'s order: the first
    least loaded wins ties."""
    groups: dict[str | None, list[Instance]] = {}
    for i in usable:
        groups.setdefault(i.spec.pool, []).append(i)
    return groups


def pick(
    usable: list[Instance],
    rtype: RequestType | None,
    routes: Routes | None,
    spill_any: bool = False,
    pools: Mapping[str | None, list[Instance]] | None = None,
) -> tuple[Instance, str] | None:
    """``choose``'s rule over instances already known to be usable (ready, routable, below their concurrency
    bound, not excluded): the least loaded instance with room (below its admission ``limit``) of the first pool
    of the route that has one; when every pool is full, with ``spill_any`` the least full instance with room of
    any pool, else the least loaded of the first pool with any usable instance. ``pools``: ``by_pool(usable)``,
    for a caller that routes many requests over the same instances (the replay) and keeps it."""
    if not usable:
        return None
    if rtype is None:
        best = min(usable, key=_load)
        return best, best.spec.pool or "any"
    order = routes.get(rtype.name) if routes else None
    if pools is None:
        pools = by_pool(usable)
    full: tuple[list[Instance], str] | None = None  # where the request queues when every pool is full
    for pool in order or pools_for(rtype):
        members = pools.get(pool)
        if not members:
            continue
        room = [i for i in members if i.in_flight < i.limit]
        if room:
            return min(room, key=_load), pool
        if full is None:
            full = members, pool
    generic = pools.get(None, [])
    if full is None and generic:
        return min(generic, key=_load), rtype.name
    room = [i for i in generic if i.in_flight < i.limit]
    if room:
        return min(room, key=_load), rtype.name
    if spill_any:
        room = [i for i in usable if i.in_flight < i.limit]
        if room:
            best = min(room, key=_fill)
            return best, best.spec.pool or rtype.name
    if full is not None:
        return min(full[0], key=_load), full[1]
    return None


def _panicking_pools(ready: list[Instance], now: float, panic_below: float) -> set[str | None]:
    """Pools (None: instances without one) whose routable share of ready instances is below ``panic_below``."""
    counts: dict[str | None, list[int]] = {}
    for i in ready:
        cell = counts.setdefault(i.spec.pool, [0, 0])
        cell[0] += i.routable(now)
        cell[1] += 1
    return {pool for pool, (routable, total) in counts.items() if routable < panic_below * total}


def _load(i: Instance) -> tuple[float, float]:
    w = i.weight
    return (i.outstanding_tokens / w, i.in_flight / w)


def _fill(i: Instance) -> tuple[float, float, float]:
    """Across pools, whose weights are each relative to their own pool: the share of its admission limit an
    instance holds, then its load."""
    return (i.in_flight / i.limit, *_load(i))


class Ejection(enum.Enum):
    """What a failure did to its instance."""

    NONE = "none"  # counted (or the instance is ejected already)
    EJECTED = "ejected"
    CAPPED = "capped"  # would have been ejected, but too much of its pool is ejected already


def record_failure(  # noqa: PLR0917  (a rule over plain values; the callers hold them)
    inst: Instance,
    pool: Iterable[Instance],
    now: float,
    connect_error: bool,
    after_failures: int,
    cooldown_s: float,
    max_ejection_percent: float,
) -> Ejection:
    """Count a failure that is ``inst``'s. A connect error ejects it until ``now + cooldown_s`` at once,
    ``after_failures`` in a row do too, unless ``may_eject`` says no. ``pool``: the ready instances of its
    pool, itself included."""
    inst.consecutive_failures += 1
    if not connect_error and inst.consecutive_failures < after_failures:
        return Ejection.NONE
    if now < inst.ejected_until:
        return Ejection.NONE
    inst.consecutive_failures = 0
    if not may_eject(inst, pool, now, max_ejection_percent):
        return Ejection.CAPPED
    inst.ejected_until = now + cooldown_s
    return Ejection.EJECTED


def may_eject(inst: Instance, pool: Iterable[Instance], now: float, max_ejection_percent: float) -> bool:
    """Envoy's rule: the first ejection of a pool is always allowed; more only while the ejected stay
    within ``max_ejection_percent`` of the pool's ready instances (``pool``)."""
    members = list(pool)
    ejected = sum(1 for i in members if i is not inst and now < i.ejected_until)
    return ejected == 0 or (ejected + 1) * 100 <= max_ejection_percent * len(members)


def record_success(inst: Instance) -> None:
    """A success ends a run of failures."""
    inst.consecutive_failures = 0


MIN_WEIGHT = 0.1  # an instance the plan gives (almost) no load still takes work when the others are busier


def plan_weights(planned: Iterable[tuple[str, str, float]]) -> dict[str, float]:
    """Instance id -> routing weight from the plan's (id, pool, planned req/s): the planned load over its
    pool's mean, at least ``MIN_WEIGHT``; pools planned with no load at all weigh 1.0 each."""
    by_pool: dict[str, list[tuple[str, float]]] = {}
    for iid, pool, rps in planned:
        by_pool.setdefault(pool, []).append((iid, max(float(rps), 0.0)))
    out: dict[str, float] = {}
    for members in by_pool.values():
        mean = sum(r for _, r in members) / len(members)
        for iid, rps in members:
            out[iid] = max(rps / mean, MIN_WEIGHT) if mean > 0 else 1.0
    return out


def admission_limit(rps: float, window_s: float) -> float:
    """The admission limit of an instance planned for ``rps`` req/s: the requests that load brings in over
    ``window_s`` (Little's law: what it holds in flight if each request stays that long), at least
    ``MIN_LIMIT``; ``window_s`` <= 0 (admission off): no limit."""
    if window_s <= 0:
        return math.inf
    return max(max(float(rps), 0.0) * window_s, MIN_LIMIT)


def plan_limits(planned: Iterable[tuple[str, float]], window_s: float) -> dict[str, float]:
    """Instance id -> ``admission_limit`` from the plan's (id, planned req/s); empty when admission is off."""
    if window_s <= 0:
        return {}
    return {iid: admission_limit(rps, window_s) for iid, rps in planned}


MIN_LIMIT = 1.0  # an instance the plan gives (almost) no load still takes one request before it counts as full
# off: on the Azure traces it bought no attainment and cost energy (README "How a request is routed")
DEFAULT_ADMISSION_WINDOW_S = 0.0
DEFAULT_SPILL_ANY = False  # work-conserving spill (``choose``'s ``spill_any``); README "How a request is routed"


_CHAINS: dict[RequestType, tuple[str, ...]] = {t: tuple(p.name for p in spill_chain(t)) for t in REQUEST_TYPES}


def pools_for(rtype: RequestType) -> tuple[str, ...]:
    """The pool names of ``rtype``'s spill chain (computed once per type: this is on the request path)."""
    return _CHAINS.get(rtype) or tuple(t.name for t in spill_chain(rtype))


__all__ = [
    "DEFAULT_SPILL_ANY",
    "Ejection",
    "Instance",
    "InstanceSpec",
    "LengthClass",
    "Routes",
    "admission_limit",
    "by_pool",
    "choose",
    "expected_output_tokens",
    "may_eject",
    "pick",
    "plan_limits",
    "plan_routes",
    "plan_weights",
    "record_failure",
    "record_success",
    "request_type",
]
