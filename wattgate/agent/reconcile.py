"""Reconcile, the pure part: the plan's instances for this node vs what runs → ordered actions.

Order: drain → stop (instances leaving or changing), then for each new instance set clocks →
start, then wait healthy → register ready; new instances on free GPUs come up before the drains,
and the others replace leaving instances wave by wave (rolling), leaving instances that block no
new one being drained last.
Instances whose pool, GPUs and TP are unchanged are left alone (their clocks belong to the clock
loop), except for warm standby: a kept instance the plan marks ``standby`` is drained, then put to sleep
(drain → sleep; its record says ``asleep``); one planned active again is woken in place (set clock →
wake → wait healthy → register ready), before anything else so capacity returns first. A new standby
instance starts and goes to sleep without being registered ready. On a node that cannot sleep, standby
instances are refused (a problem; one that runs is drained and stopped). Unmanaged servers (``--external``)
are never drained, stopped, started or put to sleep for a plan: a new pool for one is a routing change
(``set_pool``: its registry record says the new pool), made in place.
No I/O here: the actuator applies the actions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wattgate.planner.contract import InstanceState, PlannedInstance


class ActionKind(enum.StrEnum):
    DRAIN = "drain"  # mark draining in Redis, wait (bounded) for in-flight requests
    STOP = "stop"
    SET_CLOCK = "set_clock"
    START = "start"
    WAIT_HEALTHY = "wait_healthy"
    REGISTER = "register"  # publish the instance as ready
    SLEEP = "sleep"  # standby: put a drained (or just started) instance to sleep; record the plan's wish
    WAKE = "wake"  # active again: wake a sleeping instance in place; record the plan's wish
    SET_POOL = "set_pool"  # an unmanaged server serves another pool: re-publish its record, nothing restarts


@dataclass(frozen=True)
class Actual:
    """An instance the agent runs (or adopted) now."""

    id: str
    pool: str
    gpus: tuple[int, ...]
    tp: int
    planned_clock_mhz: int = 0  # the clock of the plan it runs under (its clock floor, when that is higher)
    state: InstanceState = InstanceState.READY
    standby: bool = False  # the standby flag of the plan it runs under


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    instance_id: str
    gpus: tuple[int, ...] = ()
    sm_clock_mhz: int | None = None
    planned: PlannedInstance | None = None


@dataclass(frozen=True)
class Diff:
    actions: tuple[Action, ...]
    problems: tuple[str, ...]  # planned instances refused, with the reason


def _same(p: PlannedInstance, a: Actual, *, any_pool: bool = False) -> bool:
    return (any_pool or p.pool == a.pool) and tuple(p.gpus) == a.gpus and p.tp == a.tp


def _asleep(p: PlannedInstance, actual: Mapping[str, Actual]) -> bool:
    a = actual.get(p.id)
    return a is not None and a.state is InstanceState.ASLEEP and _same(p, a)


def _admissible(
    desired: Sequence[PlannedInstance], node_gpus: Sequence[int]
) -> tuple[list[PlannedInstance], list[str]]:
    ok: list[PlannedInstance] = []
    problems: list[str] = []
    used: set[int] = set()
    seen: set[str] = set()
    for p in sorted(desired, key=lambda i: i.id):
        gpus = set(p.gpus)
        if p.id in seen:
            problems.append(f"{p.id}: planned twice; the first is kept")
        elif not gpus or not gpus <= set(node_gpus):
            problems.append(f"{p.id}: GPUs {list(p.gpus)} are not all on this node {list(node_gpus)}")
        elif len(gpus) != p.tp:
            problems.append(f"{p.id}: TP{p.tp} on {len(gpus)} GPUs {list(p.gpus)}")
        elif gpus & used:
            problems.append(f"{p.id}: GPUs {sorted(gpus & used)} are already planned for another instance")
        else:
            ok.append(p)
            used |= gpus
        seen.add(p.id)
    return ok, problems


def _bring_up(arriving: Sequence[PlannedInstance], *, woken: bool = False) -> list[Action]:
    """Clock then start (or wake) each, then wait for each and register it ready (or put it to sleep)."""
    actions: list[Action] = []
    for p in arriving:
        gpus = tuple(p.gpus)
        actions.append(Action(ActionKind.SET_CLOCK, p.id, gpus, sm_clock_mhz=p.clock_target_mhz, planned=p))
        actions.append(Action(ActionKind.WAKE if woken else ActionKind.START, p.id, gpus, planned=p))
    for p in arriving:
        actions.append(Action(ActionKind.WAIT_HEALTHY, p.id, tuple(p.gpus), planned=p))
        last = ActionKind.SLEEP if p.standby else ActionKind.REGISTER
        actions.append(Action(last, p.id, tuple(p.gpus), planned=p))
    return actions


def _standby(
    wanted: Sequence[PlannedInstance], keep: set[str], actual: Mapping[str, Actual]
) -> tuple[list[Action], list[Action]]:
    """Kept instances whose standby flag and state disagree: (wake-ups, sleeps). One that neither serves nor
    sleeps (failed, restarting) only has the plan's wish recorded, for its restart to follow."""
    asleep, ready = InstanceState.ASLEEP, InstanceState.READY
    waking = [p for p in wanted if p.id in keep and not p.standby and actual[p.id].state is asleep]
    to_sleep = [p for p in wanted if p.id in keep and p.standby and actual[p.id].state is ready]
    wakes = _bring_up(waking, woken=True)
    sleeps = [Action(ActionKind.DRAIN, p.id, tuple(p.gpus)) for p in to_sleep]
    sleeps += [Action(ActionKind.SLEEP, p.id, tuple(p.gpus), planned=p) for p in to_sleep]
    for p in wanted:
        a = actual.get(p.id)
        if p.id in keep and a is not None and p not in waking and p not in to_sleep and p.standby != a.standby:
            kind = ActionKind.SLEEP if p.standby else ActionKind.WAKE
            (sleeps if p.standby else wakes).append(Action(kind, p.id, tuple(p.gpus), planned=p))
    return wakes, sleeps


def diff(
    desired: Sequence[PlannedInstance],
    actual: Mapping[str, Actual],
    node_gpus: Sequence[int],
    *,
    follow_plan_clocks: bool = False,
    can_sleep: bool = False,
    repool_in_place: bool = False,
) -> Diff:
    """The actions that take this node from ``actual`` to ``desired``, in the order to apply them.

    Standby instances planned active again are woken first; then new instances on GPUs that no leaving
    instance holds come up (make before break: the pool never loses capacity it could have kept); the
    others come up in waves, each after the drain and stop of only the leaving instances on its GPUs;
    then instances going on standby are drained and put to sleep; leaving instances that block nothing go
    last. ``follow_plan_clocks`` (no clock loop): a kept instance whose planned clock (or the reactive path's
    clock floor above it) changed is re-clocked (not while it sleeps: waking sets the plan's clock).
    ``can_sleep``: this node's engines can sleep; without it standby instances are refused.
    ``repool_in_place`` (unmanaged servers): an instance whose pool changed is kept and gets ``set_pool``.
    """
    wanted, problems = _admissible(desired, node_gpus)
    if not can_sleep:  # one already asleep stays so; the others are not run
        refused = [p for p in wanted if p.standby and not _asleep(p, actual)]
        problems += [
            f"{p.id}: planned on standby, but this node cannot put engines to sleep (agent --engine vllm "
            "--sleep-mode, and no failed sleep since it started): kept stopped"
            for p in refused
        ]
        wanted = [p for p in wanted if p not in refused]
    keep = {p.id for p in wanted if p.id in actual and _same(p, actual[p.id], any_pool=repool_in_place)}
    leaving = sorted(i for i in actual if i not in keep)
    arriving = [p for p in wanted if p.id not in keep]
    busy = {g for i in leaving for g in actual[i].gpus}
    early = [p for p in arriving if not set(p.gpus) & busy]
    late = [p for p in arriving if set(p.gpus) & busy]
    wakes, sleeps = _standby(wanted, keep, actual)
    woken = {a.instance_id for a in wakes}
    actions = [
        Action(ActionKind.SET_POOL, p.id, tuple(p.gpus), planned=p)
        for p in wanted
        if p.id in keep and p.pool != actual[p.id].pool
    ]
    actions += [
        Action(ActionKind.SET_CLOCK, p.id, tuple(p.gpus), sm_clock_mhz=p.clock_target_mhz, planned=p)
        for p in wanted
        if follow_plan_clocks
        and p.id in keep
        and p.id not in woken
        and actual[p.id].state is not InstanceState.ASLEEP
        and p.clock_target_mhz != actual[p.id].planned_clock_mhz
    ]
    actions += wakes
    actions += _bring_up(early)
    drained: set[str] = set()
    for blockers, group in _waves(late, leaving, actual):
        actions += _take_down(blockers, actual)
        actions += _bring_up(group)
        drained |= set(blockers)
    actions += sleeps
    actions += _take_down([i for i in leaving if i not in drained], actual)
    return Diff(tuple(actions), tuple(problems))


def _waves(
    late: Sequence[PlannedInstance], leaving: Sequence[str], actual: Mapping[str, Actual]
) -> list[tuple[list[str], list[PlannedInstance]]]:
    """Rolling replacement: each new instance takes down only the leaving ones on its GPUs, and is up
    before the next wave drains more, so leaving instances keep serving as long as they can (a plan
    that replaces every instance of a node never leaves the node with nothing routable)."""
    waves: list[tuple[list[str], list[PlannedInstance]]] = []
    drained: set[str] = set()
    for p in late:
        blockers = [i for i in leaving if i not in drained and set(actual[i].gpus) & set(p.gpus)]
        if blockers or not waves:
            waves.append((blockers, [p]))
            drained |= set(blockers)
        else:  # its GPUs were freed by this wave's drains: it comes up with the wave
            waves[-1][1].append(p)
    return waves


def _take_down(ids: Sequence[str], actual: Mapping[str, Actual]) -> list[Action]:
    """Drain (a sleeping instance has nothing to drain), then stop."""
    awake = [i for i in ids if actual[i].state is not InstanceState.ASLEEP]
    return [Action(ActionKind.DRAIN, i, actual[i].gpus) for i in awake] + [
        Action(ActionKind.STOP, i, actual[i].gpus) for i in ids
    ]
