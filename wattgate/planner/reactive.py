"""The 5 s reactive path, as a pure policy: pools whose requests wait too long get top clocks, then an instance.

Between plans, every few seconds, each pool is judged by one signal: the longest a request of the pool has
waited for its first token (``PoolSignal.waited_s``), against the pool's TTFT target. Once it reaches
``pressure`` of the target, every serving instance of the pool is held at its top clock (a clock floor) for
``boost_s``; if the pool was already held at the top when the signal comes again, one more instance is added
(at most one per pool per ``cooldown_s``). A hold ends ``boost_s`` after the last signal that asked for it:
the instance's clock is the clock loop's (or the plan's) again (stand-down). A pool with no signal, or one
older than ``max_age_s``, gets nothing new: its holds just run out.

The same function decides in the trace replay (``simulate.engine``: the signal is the oldest request waiting
in the pool's engines now) and in the planner leader (``planner.loop``: the largest TTFT of the pool's
requests finished in the last ``window_s``, from the gateways' observations), which writes the decision as a
plan amendment (clock floors, one more instance) that the agents apply. No clock is read here: ``now`` is
passed in, and the memory of holds and additions is passed in and handed back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from wattgate.planner.model import PlannerError


@dataclass(frozen=True)
class ReactSettings:
    pressure: float = 0.5  # react once a request has waited this share of its TTFT target for a first token
    boost_s: float = 60.0  # a pool that reacted keeps its clocks at the top this long
    cooldown_s: float = 60.0  # at most one instance added per pool in this time
    max_age_s: float = 15.0  # a signal older than this is no signal
    window_s: float = 10.0  # live: the finished requests the planner reads the TTFT signal from

    def __post_init__(self) -> None:
        if not (self.pressure > 0 and self.boost_s > 0 and self.cooldown_s >= 0 and self.max_age_s > 0):
            raise PlannerError("reactive: pressure and boost_s must be > 0, cooldown_s >= 0, max_age_s > 0")
        if not self.window_s > 0:
            raise PlannerError("reactive: window_s must be > 0")


@dataclass(frozen=True)
class Member:
    """A serving instance of a pool: its clock now (or the floor it is held at) and its top clock."""

    id: str
    tp: int
    clock_mhz: int
    top_mhz: int


@dataclass(frozen=True)
class PoolSignal:
    pool: str
    waited_s: float | None  # the longest wait for a first token the signal saw; None: no signal
    target_s: float  # the pool's TTFT target
    at_s: float  # when the signal was taken
    members: tuple[Member, ...]  # the pool's serving instances


@dataclass(frozen=True)
class Add:
    """One more instance for ``pool``: ``tp`` (its largest instance's) at ``clock_mhz`` (that one's top)."""

    pool: str
    tp: int
    clock_mhz: int


@dataclass(frozen=True)
class Memory:
    """What the reactive path remembers between ticks: each held instance's end of hold, each pool's last add."""

    held_until: Mapping[str, float] = field(default_factory=dict)  # instance id -> end of its hold
    added_at: Mapping[str, float] = field(default_factory=dict)  # pool -> when an instance was last added

    def held(self, instance_id: str, now: float) -> bool:
        return self.held_until.get(instance_id, -math.inf) > now

    def floors(self, members: Iterable[Member], now: float) -> dict[str, int]:
        """Instance id -> the clock floor (its top) of each of ``members`` held now."""
        return {m.id: m.top_mhz for m in members if self.held(m.id, now)}

    def added(self, pool: str, instance_id: str, now: float, settings: ReactSettings) -> Memory:
        """After the caller started (or woke) ``instance_id`` for an ``Add``: the pool's cooldown starts, and the
        new instance is held at the top like the others."""
        return Memory({**self.held_until, instance_id: now + settings.boost_s}, {**self.added_at, pool: now})


@dataclass(frozen=True)
class Reaction:
    floors: dict[str, int]  # instance id -> clock floor, for every instance held from this tick on
    raised: tuple[str, ...]  # pools that reacted this tick (their members' holds were set or renewed)
    add: tuple[Add, ...]  # one more instance each
    stand_down: tuple[str, ...]  # instances whose hold ended at this tick
    memory: Memory


def react(signals: Sequence[PoolSignal], memory: Memory, now: float, settings: ReactSettings) -> Reaction:
    """The reactive path's decision at ``now`` (see the module docstring)."""
    held = dict(memory.held_until)
    raised: list[str] = []
    adds: list[Add] = []
    for s in signals:
        if not s.members or s.waited_s is None or now - s.at_s > settings.max_age_s:
            continue
        if s.waited_s < settings.pressure * s.target_s:
            continue
        # already at the top and held (by an earlier signal) is what "raising the clock was not enough" means
        boosted = all(m.clock_mhz >= m.top_mhz and memory.held(m.id, now) for m in s.members)
        for m in s.members:
            held[m.id] = now + settings.boost_s
        raised.append(s.pool)
        if boosted and now - memory.added_at.get(s.pool, -math.inf) >= settings.cooldown_s:
            biggest = max(s.members, key=lambda m: m.tp)
            adds.append(Add(s.pool, biggest.tp, biggest.top_mhz))
    ended = tuple(sorted(i for i, until in held.items() if until <= now))
    for i in ended:
        del held[i]
    tops = {m.id: m.top_mhz for s in signals for m in s.members}
    floors = {i: tops[i] for i in held if i in tops}
    return Reaction(floors, tuple(raised), tuple(adds), ended, Memory(held, dict(memory.added_at)))


def forget(memory: Memory, keep: Iterable[str]) -> Memory:
    """``memory`` without the holds of instances not in ``keep`` (gone from the plan or the cluster)."""
    ids = set(keep)
    return Memory({i: t for i, t in memory.held_until.items() if i in ids}, dict(memory.added_at))
