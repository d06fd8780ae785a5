"""One epoch's plan from plain inputs: build the problem, solve it, place the managed instances and hand the
fixed ones their pool and clock. Pure (no Redis, no clock): the planner loop calls it with what the agents'
heartbeats say, the trace replay with a fleet of its own.

After the solve, two rules for the fixed instances (``fixedplan``): every request type with demand keeps a
pool on its spill chain (``cover_every_type``), and the fleet's instances are shared out among the pools
by their planned load (``balance_fixed``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from wattgate.planner.contract import PlannedInstance
from wattgate.planner.explain import running_counts
from wattgate.planner.fixedplan import balance_fixed, cover_every_type
from wattgate.planner.model import Decision, FixedInstance, Inventory, Problem, SolverSettings, make_problem
from wattgate.planner.placement import Placement, assign_fixed, collateral_moves, largest_free_block, place
from wattgate.planner.solver import Backend, solve
from wattgate.profiles.table import Profile


@dataclass(frozen=True)
class EpochPlan:
    decision: Decision
    placement: Placement  # the managed instances on the inventory's GPUs
    fixed: tuple[PlannedInstance, ...]  # the fixed instances, each with the pool, clock and load the plan gives it
    left_out: tuple[str, ...]  # fixed instances the plan gives nothing (the profile has no item for their TP)

    @property
    def instances(self) -> tuple[PlannedInstance, ...]:
        return (*self.placement.instances, *self.fixed)


def plan_epoch(
    profile: Profile,
    demand_rps: Mapping[str, float],
    inventory: Inventory,
    settings: SolverSettings,
    *,
    running: Sequence[PlannedInstance] = (),
    fixed: Sequence[FixedInstance] = (),
) -> EpochPlan:
    """Plan one epoch for ``demand_rps`` (pool -> forecast req/s) on the managed ``inventory`` plus the
    ``fixed`` instances (outside the inventory: nothing is started, stopped or moved for them).

    ``running``: the previous plan's instances. A fixed instance the previous plan named starts from the pool
    and clock it gave it (else from its own ``pool``/``clock_mhz``), the others count as running managed
    instances (reconfiguration costs). Raises ``PlannerError`` on bad input."""
    ids = {f.id for f in fixed}
    before = {p.id: p for p in running if p.id in ids}
    now = tuple(
        replace(f, pool=before[f.id].pool, clock_mhz=before[f.id].sm_clock_mhz) if f.id in before else f for f in fixed
    )
    managed = [p for p in running if p.id not in ids]
    problem = make_problem(profile, demand_rps, inventory, settings, running_counts(managed), fixed=now)
    decision, placement = solve_placeable(problem, managed)
    fixed_groups = cover_every_type(decision, profile, settings)
    decision = replace(decision, fixed_groups=balance_fixed(fixed_groups, profile, settings))
    assigned = assign_fixed(decision.fixed_groups, now)
    given = {p.id for p in assigned}
    return EpochPlan(decision, placement, assigned, tuple(sorted(f.id for f in now if f.id not in given)))


def solve_placeable(
    problem: Problem,
    running: Sequence[PlannedInstance],
    held: Sequence[PlannedInstance] = (),
    backend: Backend | None = None,
) -> tuple[Decision, Placement]:
    """Solve ``problem`` and place its plan; when the placement would restart instances the plan keeps (a new
    instance of a larger TP fits only where they run: they drain and restart, and their pools go short for a
    start's time), solve once more with new instances only of the TPs that fit on the GPUs free now (or of a
    pool's running TP), and take that plan if it serves as much load, places as much and moves fewer.

    The MILP counts GPUs, not where they are: on a full cluster a cheaper re-shard (one TP8 instead of a TP4)
    could take every pool down at once (the diurnal day's replay: all three instances drained for one TP8)."""
    decision = solve(problem, backend)
    placement = place(decision.groups, problem.inventory, running, held)
    moves = collateral_moves(decision.groups, placement, running)
    if moves == 0:
        return decision, placement
    room = largest_free_block(problem.inventory, [*running, *held])
    runs = {(r.pool, r.tp) for r in running}
    items = tuple(i for i in problem.items if i.tp <= room or (i.pool.name, i.tp) in runs)
    if len(items) == len(problem.items):
        return decision, placement
    again = solve(replace(problem, items=items), backend)
    there = place(again.groups, problem.inventory, running, held)
    if (
        sum(again.unserved_rps.values()) <= sum(decision.unserved_rps.values()) + 1e-9
        and there.unplaced <= placement.unplaced
        and collateral_moves(again.groups, there, running) < moves
    ):
        return again, there
    return decision, placement
