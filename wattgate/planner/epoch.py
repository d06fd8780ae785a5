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
from wattgate.planner.model import Decision, FixedInstance, Inventory, SolverSettings, make_problem
from wattgate.planner.placement import Placement, assign_fixed, place
from wattgate.planner.solver import solve
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
    decision = solve(problem)
    fixed_groups = cover_every_type(decision, profile, settings)
    decision = replace(decision, fixed_groups=balance_fixed(fixed_groups, profile, settings))
    placement = place(decision.groups, inventory, managed)
    assigned = assign_fixed(decision.fixed_groups, now)
    given = {p.id for p in assigned}
    return EpochPlan(decision, placement, assigned, tuple(sorted(f.id for f in now if f.id not in given)))
