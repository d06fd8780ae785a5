"""The planning problem as data: settings, GPU inventory, the operating points a pool can run at, the result.

Pure: no PuLP, no Redis, no clock. ``solver.py`` turns a ``Problem`` into a MILP; ``greedy.py`` is the
fallback; both return a ``Decision``. Every power figure here is modelled from the profile.

*Fixed* instances are servers the planner cannot start, stop or resize (the agents' unmanaged servers, or a
replay's fixed fleet): each is on whatever node it runs on, outside the GPU budget, and each epoch the plan
only chooses the pool it serves and its clock, so they carry load before any managed instance is started.

An *item* is one way to run one instance of a pool: (TP, SM clock, rated load). The rated loads are
the profile's measured loads up to the SLO-feasible capacity (``Profile.max_load``) times
``SolverSettings.headroom``, plus that rating itself; an item's power is the highest modelled power at
any load up to its rating, so a plan's modelled power is an upper bound of what the profile predicts
for the loads it actually assigns.
"""

from __future__ import annotations

import enum
import functools
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from wattgate.profiles.classes import ProfilesError, RequestType, SloTargets, spill_chain
from wattgate.profiles.table import Profile

# share of an instance's SLO capacity the plan loads it to by default: chosen by `wattgate simulate` on
# the Azure conversation and coding hours (README, "Trace replay"): 1.0 ran pools right at their P99 limit
DEFAULT_HEADROOM = 0.8


class PlannerError(Exception):
    """Base exception of the planner package (bad input, unusable profile, Redis trouble)."""


@dataclass(frozen=True)
class SolverSettings:
    """Knobs of one solve. Costs are energies, spread over ``period_s`` to compare with power."""

    gpus_per_node: int = 8
    time_limit_s: float = 1.5
    gap_rel: float = 0.02  # CBC stops once provably within this relative gap of the optimum (0: exact)
    spill_hops: int = 2  # how many longer pools of the spill chain a pool may spill to
    period_s: float = 300.0
    # what a transition's energy is spread over, to weigh it against the power it saves: the plan's
    # expected lifetime; None: one period. With re-plans every minute, a start amortised over one minute
    # would never pay; over the ten minutes a configuration typically lasts it does when it saves enough
    amortize_s: float | None = None
    start_cost_j_per_gpu: float = 24_000.0  # ~60 s of loading weights at ~400 W per GPU
    reshard_cost_j_per_gpu: float = 12_000.0  # re-shard an existing instance to another TP
    clock_change_cost_j: float = 500.0  # a clock change is cheap but not free: it damps churn
    spill_cost_w_per_rps: float = 1.0  # spill only when it saves power
    unserved_penalty_w_per_rps: float = 1.0e6
    slo: SloTargets = field(default_factory=SloTargets)
    clocks: tuple[int, ...] | None = None  # restrict the SM clocks considered (None: all measured)
    prune: bool = True
    # share of an instance's SLO-feasible capacity (the profile's P99-at-steady-load limit) the plan may
    # load it to: the rest is headroom for bursts inside a minute and misclassified requests
    headroom: float = DEFAULT_HEADROOM

    @property
    def amortization_s(self) -> float:
        return self.amortize_s if self.amortize_s is not None else self.period_s

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise PlannerError("gpus_per_node must be >= 1")
        if not self.time_limit_s > 0 or not self.period_s > 0:
            raise PlannerError("time_limit_s and period_s must be > 0")
        if self.amortize_s is not None and not self.amortize_s > 0:
            raise PlannerError("amortize_s must be > 0")
        costs = (self.start_cost_j_per_gpu, self.reshard_cost_j_per_gpu, self.clock_change_cost_j)
        if not 0 <= self.gap_rel < 1 or self.spill_hops < 0:
            raise PlannerError("gap_rel must be in [0, 1) and spill_hops >= 0")
        if min(costs) < 0 or self.spill_cost_w_per_rps < 0:
            raise PlannerError("reconfiguration and spill costs must be >= 0")
        if not 0 < self.headroom <= 1:
            raise PlannerError("headroom (the usable share of an instance's SLO capacity) must be in (0, 1]")


@dataclass(frozen=True)
class Node:
    """A GPU host and how many GPUs the plan may use on it."""

    name: str
    gpus: int


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Node, ...]

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @classmethod
    def uniform(cls, gpus: int, gpus_per_node: int = 8) -> Inventory:
        """``gpus`` GPUs on nodes of ``gpus_per_node`` (the last one partial), named node-0, node-1, ..."""
        if gpus < 0 or gpus_per_node < 1:
            raise PlannerError("GPU count must be >= 0 and GPUs per node >= 1")
        full, rest = divmod(gpus, gpus_per_node)
        sizes = [gpus_per_node] * full + ([rest] if rest else [])
        return cls(tuple(Node(f"node-{i}", n) for i, n in enumerate(sizes)))

    def slots(self, tp: int) -> int:
        """GPUs usable by groups of ``tp`` or more GPUs (a TP group never spans nodes)."""
        return sum(tp * (n.gpus // tp) for n in self.nodes)


@dataclass(frozen=True)
class FixedInstance:
    """A running instance the plan cannot start, stop or resize: it chooses only its pool and SM clock.

    ``pool`` and ``clock_mhz`` are what it serves and runs at now (None: nothing assigned yet); the plan
    keeps them when that costs nothing, so routing does not churn between equivalent plans."""

    id: str
    node: str
    gpus: tuple[int, ...]
    tp: int
    pool: str | None = None
    clock_mhz: int | None = None

    def __post_init__(self) -> None:
        if self.tp < 1 or len(self.gpus) != self.tp or len(set(self.gpus)) != self.tp:
            raise PlannerError(f"fixed instance {self.id}: TP{self.tp} needs {self.tp} distinct GPUs, got {self.gpus}")


@dataclass(frozen=True)
class Item:
    """One way to run one instance of a pool: TP, SM clock and the load it is rated for."""

    pool: RequestType
    tp: int
    clock_mhz: int
    load_rps: float  # rated load: at most the SLO-feasible capacity
    power_w: float  # modelled, conservative: the highest power at any load up to load_rps

    @functools.cached_property
    def config(self) -> tuple[str, int, int]:  # cached: the solver and the warm start ask many times
        return (self.pool.name, self.tp, self.clock_mhz)


Config = tuple[str, int, int]  # (pool name, TP, SM clock MHz)


@dataclass(frozen=True)
class Problem:
    """One epoch to plan: forecast load per pool, the GPUs, the items, and what runs now."""

    demand_rps: Mapping[str, float]
    inventory: Inventory
    items: tuple[Item, ...]
    current: Mapping[Config, int]  # instances running now per (pool, TP, clock)
    settings: SolverSettings
    profile: Profile
    fixed: tuple[FixedInstance, ...] = ()  # instances outside the GPU budget that must be used as they are
    fixed_items: tuple[Item, ...] = ()  # the ways to run them: items of their TPs, pruned within each TP only

    @functools.cached_property
    def pools(self) -> tuple[str, ...]:
        return tuple(sorted({i.pool.name for i in (*self.items, *self.fixed_items)}))

    @functools.cached_property
    def fixed_counts(self) -> dict[int, int]:
        """TP -> fixed instances of that TP the plan assigns (those of a TP with no item are left as they are)."""
        tps = {it.tp for it in self.fixed_items}
        out: dict[int, int] = {}
        for f in self.fixed:
            if f.tp in tps:
                out[f.tp] = out.get(f.tp, 0) + 1
        return out

    @functools.cached_property
    def fixed_current(self) -> dict[Config, int]:
        """Fixed instances per (pool, TP, clock) they run at now (those with a pool and a clock)."""
        out: dict[Config, int] = {}
        for f in self.fixed:
            if f.pool is not None and f.clock_mhz is not None and f.tp in self.fixed_counts:
                key = (f.pool, f.tp, f.clock_mhz)
                out[key] = out.get(key, 0) + 1
        return out

    def routes(self, pool: str) -> tuple[str, ...]:
        """Pools that may serve ``pool``'s load (itself first), among those with items."""
        if pool not in self._routes:
            have = set(self.pools)
            self._routes[pool] = tuple(q for q in spill_routes(pool, self.settings) if q in have)
        return self._routes[pool]

    @functools.cached_property
    def _routes(self) -> dict[str, tuple[str, ...]]:
        return {}  # memo of routes(): the solver and the warm start ask for them many times


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"  # the MILP proved optimality
    FEASIBLE = "feasible"  # the MILP hit its time limit with a feasible plan
    FALLBACK = "fallback"  # the greedy fallback produced the plan


@dataclass(frozen=True)
class Group:
    """``count`` identical instances of one pool at one (TP, clock), each with its planned load."""

    pool: str
    tp: int
    clock_mhz: int
    count: int
    load_rps_each: float
    power_w_each: float  # modelled from the profile at load_rps_each

    @property
    def gpus(self) -> int:
        return self.tp * self.count

    @property
    def power_w(self) -> float:
        return self.power_w_each * self.count


@dataclass(frozen=True)
class Decision:
    """What the solver decided, with everything needed to explain it."""

    groups: tuple[Group, ...]
    demand_rps: dict[str, float]
    flows_rps: dict[str, dict[str, float]]  # demand pool -> serving pool -> req/s
    unserved_rps: dict[str, float]
    gpu_budget: int
    status: SolveStatus
    solve_time_s: float  # measured wall time of the solve
    alerts: tuple[str, ...] = ()
    fixed_groups: tuple[Group, ...] = ()  # what the fixed instances run: pool, clock and load, by TP

    @property
    def gpus_used(self) -> int:
        """GPUs of the budget the plan uses (fixed instances are outside it)."""
        return sum(g.gpus for g in self.groups)

    @property
    def power_w(self) -> float:
        """Modelled power of every planned instance, fixed ones included."""
        return sum(g.power_w for g in (*self.groups, *self.fixed_groups))

    def counts(self) -> dict[Config, int]:
        out: dict[Config, int] = {}
        for g in self.groups:
            key = (g.pool, g.tp, g.clock_mhz)
            out[key] = out.get(key, 0) + g.count
        return out


def parse_demand(demand: Mapping[str, float]) -> dict[str, float]:
    """Validate a pool -> req/s mapping: known pool names, finite loads >= 0."""
    out: dict[str, float] = {}
    for name, rps in demand.items():
        try:
            pool = RequestType.parse(name).name
        except ProfilesError as exc:
            raise PlannerError(str(exc)) from exc
        if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not math.isfinite(rps) or rps < 0:
            raise PlannerError(f"load of pool {pool} must be a finite number >= 0 req/s, got {rps!r}")
        out[pool] = out.get(pool, 0.0) + float(rps)
    return out


def build_items(
    profile: Profile,
    settings: SolverSettings,
    pools: Iterable[str] | None = None,
    keep: Iterable[Config] = (),
    inbound: Mapping[str, Iterable[str]] | None = None,
) -> tuple[Item, ...]:
    """Every SLO-feasible item of the profile, dominated ones pruned (configs in ``keep`` never are).

    ``inbound``: pool -> the other request types that may spill into it. An item's rating then meets
    every one of them by its own rows at the item's whole load (as the agent's clock policy and an engine
    judge them), so a pool that may take a type with a stricter curve is not rated on its own curve alone.
    """
    wanted = None if pools is None else {RequestType.parse(p) for p in pools}
    keep_set = set(keep)
    items: list[Item] = []
    for rtype in profile.request_types:
        if wanted is not None and rtype not in wanted:
            continue
        others = tuple(sorted({RequestType.parse(t) for t in (inbound or {}).get(rtype.name, ())} - {rtype}))
        pool_items: list[Item] = []
        for tp in profile.tps:
            try:
                clocks = profile.clocks(tp, rtype)
            except ProfilesError:
                continue
            for clock in clocks:
                if settings.clocks is None or clock in settings.clocks:
                    pool_items.extend(_config_items(profile, settings, rtype, tp, clock, others=others))
        items.extend(_prune(pool_items, keep_set) if settings.prune else pool_items)
    return tuple(items)


# Items per profile and (type, TP, clock, TTFT and TBT targets, headroom, inbound types): a profile never
# changes once loaded, and the planner loop re-plans with the same one every period (profile lookups are
# most of make_problem's time).
_ITEMS: weakref.WeakKeyDictionary[
    Profile, dict[tuple[RequestType, int, int, float, float, float, tuple[RequestType, ...]], tuple[Item, ...]]
] = weakref.WeakKeyDictionary()


def _config_items(
    profile: Profile,
    settings: SolverSettings,
    rtype: RequestType,
    tp: int,
    clock: int,
    *,
    others: tuple[RequestType, ...],
) -> tuple[Item, ...]:
    slo = settings.slo
    key = (rtype, tp, clock, slo.ttft_for(rtype), slo.tbt_p99_s, settings.headroom, others)
    cached = _ITEMS.setdefault(profile, {})
    if key not in cached:
        cached[key] = tuple(_rated_items(profile, settings, rtype, tp, clock, others=others))
    return cached[key]


def _capacity(profile: Profile, slo: SloTargets, tp: int, clock: int, types: Iterable[RequestType]) -> float:
    """The load at which every one of ``types`` still meets its targets by its own rows (a type the profile
    did not measure at this TP and clock is left out: nothing can judge it)."""
    cap = math.inf
    for t in types:
        try:
            cap = min(cap, profile.max_load(tp, clock, t, slo))
        except ProfilesError:
            continue
    return cap


def _rated_items(
    profile: Profile,
    settings: SolverSettings,
    rtype: RequestType,
    tp: int,
    clock: int,
    *,
    others: tuple[RequestType, ...],
) -> list[Item]:
    own = profile.max_load(tp, clock, rtype, settings.slo)
    cap = min(own, _capacity(profile, settings.slo, tp, clock, others)) * settings.headroom
    if cap <= 0:
        return []
    levels = sorted({x for x in profile.loads(tp, clock, rtype) if x <= cap} | {cap})
    out: list[Item] = []
    peak = 0.0
    for level in levels:
        peak = max(peak, profile.lookup(tp, clock, rtype, level).power_w)
        out.append(Item(rtype, tp, clock, level, peak))
    return out


def _prune(items: list[Item], keep: set[Config]) -> list[Item]:
    """Drop an item when another uses no more GPUs, carries at least its load and draws no more power."""
    # In this order an item can only be dominated by one before it, and dominance is transitive, so
    # checking each item against the undominated ones before it finds them all.
    order = sorted(items, key=lambda a: (a.tp, -a.load_rps, a.power_w, a.clock_mhz))
    front: list[tuple[float, float]] = []  # (load, power) of the undominated items so far
    dropped: set[int] = set()
    for a in order:
        if any(load >= a.load_rps and power <= a.power_w for load, power in front):
            if a.config not in keep:
                dropped.add(id(a))
        else:
            front.append((a.load_rps, a.power_w))
    return [a for a in items if id(a) not in dropped]


def spill_routes(pool: str, settings: SolverSettings) -> tuple[str, ...]:
    """``pool`` and the next ``spill_hops`` pools of its spill chain that share its TTFT target (same input
    class): a pool's ratings are SLO-feasible for its own target, so a type whose target is stricter
    (a shorter input spilled into a pool of longer inputs) would miss it there."""
    rtype = RequestType.parse(pool)
    ttft = settings.slo.ttft_for(rtype)
    chain = [t.name for t in spill_chain(rtype) if settings.slo.ttft_for(t) <= ttft]
    return tuple(chain[: settings.spill_hops + 1])


def make_problem(
    profile: Profile,
    demand_rps: Mapping[str, float],
    inventory: Inventory,
    settings: SolverSettings | None = None,
    current: Mapping[Config, int] | None = None,
    *,
    fixed: Sequence[FixedInstance] = (),
) -> Problem:
    """Validate the inputs and build the items for every pool the demand can reach (for the managed GPUs
    and for the ``fixed`` instances' TPs)."""
    settings = settings or SolverSettings()
    demand = parse_demand(demand_rps)
    have = {t.name for t in profile.request_types}
    reach: set[str] = set()
    inbound: dict[str, set[str]] = {}
    for p, d in demand.items():
        if d > 0:
            for q in spill_routes(p, settings):
                reach.add(q)
                inbound.setdefault(q, set()).add(p)
    missing = sorted(p for p, d in demand.items() if d > 0 and p not in have)
    if missing:
        raise PlannerError(f"the profile has no measurements for pool(s) {', '.join(missing)}")
    cur = {c: int(m) for c, m in (current or {}).items() if m > 0}
    items = build_items(profile, settings, pools=sorted(reach & have), keep=cur, inbound=inbound)
    ids = [f.id for f in fixed]
    if len(set(ids)) != len(ids):
        raise PlannerError(f"fixed instance ids must be unique, got {sorted(ids)}")
    fixed_items: list[Item] = []
    if fixed:
        tps = {f.tp for f in fixed}
        unpruned = build_items(profile, replace(settings, prune=False), pools=sorted(reach & have), inbound=inbound)
        fixed_items = [it for it in unpruned if it.tp in tps]
    if fixed and settings.prune:  # within one TP and pool only: a fixed TP4 server cannot become the TP2 that wins
        running = {(f.pool, f.tp, f.clock_mhz) for f in fixed if f.pool is not None and f.clock_mhz is not None}
        groups: dict[tuple[int, str], list[Item]] = {}
        for it in fixed_items:
            groups.setdefault((it.tp, it.pool.name), []).append(it)
        fixed_items = [it for key in sorted(groups) for it in _prune(groups[key], running)]
    return Problem(demand, inventory, items, cur, settings, profile, tuple(fixed), tuple(fixed_items))
