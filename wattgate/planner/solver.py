"""The minimum-power plan as a MILP (PuLP + CBC), with a time limit and the greedy fallback: never no plan.

Variables (identical instances aggregated, so the model size does not grow with the GPU count):

- ``n[i]`` integer: instances running item ``i`` (pool, TP, clock, rated load);
- ``f[j]`` integer: fixed instances (servers the plan cannot start or stop) running fixed item ``j``; the
  fixed instances of each TP run exactly one item each (they draw power whatever the plan says), outside
  the GPU budget and with no reconfiguration cost (a pool change is a routing change only);
- ``z[r,q]`` binary: type ``r``'s load goes to pool ``q``, all of it (one route per type, as the gateway
  routes; the routes are ``r`` and the next ``spill_hops`` pools of ``spill_chain(r)`` with the same
  TTFT target, ``Problem.routes``; the constant 1 for a type with one route);
- ``w[r,q]`` continuous: req/s of ``r`` routed to ``q`` left unserved (``<= d[r] z[r,q]``; heavily
  penalised: only when GPUs run out); ``q`` serves ``d[r] z[r,q] - w[r,q]`` of ``r``;
- with a current plan, per pool and TP: instances started, removed and re-sharded, and per
  config instances whose clock changed.

Constraints: each pool's served load fits its instances' rated loads, managed and fixed (each within the SLO-feasible
capacity); for each TP size t, the GPUs of groups of size >= t fit in the nodes' t-aligned slots
(sizes 1/2/4/8 divide each other, so this is exactly when the groups pack into the nodes without a
group spanning two). Objective:
modelled power + reconfiguration energy spread over the period + spill (on served req/s) and
unserved penalties, all in W. Writing the served load as ``d z - w`` (not a flow variable bounded by
``d z``) lets CBC's cut generators work on the routing binaries directly: several times less CBC time
than the flow form (measured: bench/planner.py --vs), most where the GPU budget binds or when re-planning.

pulp is imported only here (import-linter contract).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

import pulp

from wattgate.planner.greedy import greedy_counts, greedy_solve, keep_current, realize
from wattgate.planner.model import Config, Decision, PlannerError, Problem, SolveStatus

log = logging.getLogger(__name__)


class SolverFailed(PlannerError):
    """The MILP produced no usable solution (solver error, no incumbent within the time limit)."""


@dataclass(frozen=True)
class MilpSolution:
    counts: tuple[int, ...]  # per problem item
    flows: dict[str, dict[str, float]]
    unserved: dict[str, float]
    proved_optimal: bool
    fixed_counts: tuple[int, ...] = ()  # per problem fixed item


Backend = Callable[[Problem], MilpSolution]
Routing = dict[tuple[str, str], pulp.LpVariable]  # (demand pool, serving pool) -> variable


def solve(problem: Problem, backend: Backend | None = None) -> Decision:
    """Solve ``problem``; on any solver failure fall back to the greedy plan, with an alert."""
    started = time.perf_counter()
    try:
        sol = (backend or solve_milp)(problem)
    except (SolverFailed, pulp.PulpError, OSError) as exc:
        log.warning("MILP failed (%s); publishing the greedy fallback plan", exc)
        fallback = greedy_solve(problem)
        alert = f"MILP solver failed ({exc}); greedy fallback plan"
        return _with(fallback, time.perf_counter() - started, (alert, *fallback.alerts))
    status = SolveStatus.OPTIMAL if sol.proved_optimal else SolveStatus.FEASIBLE  # optimal within gap_rel
    alerts: tuple[str, ...] = ()
    if not sol.proved_optimal:
        alerts = (
            f"MILP stopped at its {problem.settings.time_limit_s:g} s limit: best plan found, not proved optimal",
        )
    elapsed = time.perf_counter() - started
    return realize(problem, sol.counts, sol.flows, sol.unserved, status, elapsed, alerts, sol.fixed_counts)


def _with(d: Decision, solve_time_s: float, alerts: tuple[str, ...]) -> Decision:
    return replace(d, solve_time_s=solve_time_s, alerts=alerts)


def solve_milp(problem: Problem) -> MilpSolution:
    """Build and solve the MILP with CBC, warm-started from the greedy plan."""
    model = _build(problem)
    _warm_start(problem, model)
    cmd = pulp.COIN_CMD(
        path=_cbc_binary(),
        msg=False,
        timeLimit=problem.settings.time_limit_s,
        gapRel=problem.settings.gap_rel or None,
        threads=1,
        warmStart=True,
        # at most 5 rounds of root cuts (CBC's log shows 100 on this small model by default): with the
        # cover warm start, later rounds cost more than they save (2x less CBC time on bench/planner.py's cases)
        options=["passCuts 5"],
    )
    prob = model.prob
    try:
        prob.solve(cmd)
    except pulp.PulpSolverError as exc:
        raise SolverFailed(f"CBC: {exc}") from exc
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise SolverFailed(f"CBC returned {pulp.LpSolution.get(prob.sol_status, prob.sol_status)}")
    counts = tuple(round(v.value() or 0.0) for v in model.n)
    fixed = tuple(round(v.value() or 0.0) for v in model.f)
    flows: dict[str, dict[str, float]] = defaultdict(dict)
    unserved = {r: d for r, d in model.demand.items() if not problem.routes(r)}
    for (r, q), short in model.w.items():
        left = min(max(short.value() or 0.0, 0.0), model.demand[r])
        flows[r][q] = max(model.demand[r] * _value(model.z[(r, q)]) - left, 0.0)
        unserved[r] = unserved.get(r, 0.0) + left
    return MilpSolution(counts, dict(flows), unserved, prob.sol_status == pulp.LpSolutionOptimal, fixed)


def _value(z: pulp.LpVariable | int) -> int:
    return z if isinstance(z, int) else round(z.value() or 0.0)


def _cbc_binary() -> str:
    """A ``cbc`` on PATH, else the one bundled in the pulp wheel (PULP_CBC_CMD, deprecated, used it)."""
    found = shutil.which("cbc")
    if found:
        return found
    bundled = str(pulp.PULP_CBC_CMD.pulp_cbc_path)
    if not os.access(bundled, os.X_OK):
        raise SolverFailed(f"no CBC binary: none on PATH and the bundled {bundled} is not executable")
    return bundled


def _warm_start(problem: Problem, model: _Model) -> None:
    """Hand CBC a first incumbent: the running plan when it still serves the load (so a plan within
    the gap of the optimum is kept rather than swapped for another), else the cover or greedy plan."""
    counts, flows, _, fixed = keep_current(problem) or greedy_counts(problem)
    for var, c in zip(model.n, counts, strict=True):
        var.setInitialValue(c)
    for var, c in zip(model.f, fixed, strict=True):
        var.setInitialValue(c)
    for r, d in model.demand.items():
        by = flows.get(r, {})
        routes = problem.routes(r)
        main = max(by, key=lambda p: by[p]) if by else (routes[0] if routes else "")
        for q in routes:
            z = model.z[(r, q)]
            if not isinstance(z, int):
                z.setInitialValue(1 if q == main else 0)
            model.w[(r, q)].setInitialValue(max(d - by.get(q, 0.0), 0.0) if q == main else 0.0)


@dataclass(frozen=True)
class _Model:
    prob: pulp.LpProblem
    n: list[pulp.LpVariable]
    f: list[pulp.LpVariable]  # per fixed item
    z: dict[tuple[str, str], pulp.LpVariable | int]  # (type, pool): routed there (1: its only route)
    w: Routing  # (type, pool): req/s routed there left unserved
    demand: dict[str, float]  # req/s > 0 per type


def _build(problem: Problem) -> _Model:
    s, inv, items = problem.settings, problem.inventory, problem.items
    prob = pulp.LpProblem("wattgate_plan", pulp.LpMinimize)
    n = [
        prob.add_variable(f"n{k}", lowBound=0, upBound=inv.slots(it.tp) // it.tp, cat=pulp.LpInteger)
        for k, it in enumerate(items)
    ]
    fixed_counts = problem.fixed_counts
    f = [
        prob.add_variable(f"f{k}", lowBound=0, upBound=fixed_counts[it.tp], cat=pulp.LpInteger)
        for k, it in enumerate(problem.fixed_items)
    ]
    for tp, count in sorted(fixed_counts.items()):
        prob += (
            pulp.lpSum(v for v, it in zip(f, problem.fixed_items, strict=True) if it.tp == tp) == count,
            f"fixed_tp{tp}",
        )
    demand = {r: d for r, d in problem.demand_rps.items() if d > 0}
    z: dict[tuple[str, str], pulp.LpVariable | int] = {}
    w: Routing = {}
    for r, d in demand.items():
        z.update(_all_or_nothing(prob, problem, r))
        for q in problem.routes(r):
            w[(r, q)] = prob.add_variable(f"w_{r}_{q}", lowBound=0, upBound=d)
            if not isinstance(z[(r, q)], int):
                prob += w[(r, q)] <= d * z[(r, q)], f"route_{r}_{q}"
    model = _Model(prob, n, f, z, w, demand)
    per_pool: dict[str, list[pulp.LpAffineExpression]] = defaultdict(list)
    for k, it in enumerate(items):
        per_pool[it.pool.name].append(it.load_rps * n[k])
    for k, it in enumerate(problem.fixed_items):
        per_pool[it.pool.name].append(it.load_rps * f[k])
    for q, rated in per_pool.items():
        inflow = [demand[r] * z[(r, qq)] - var for (r, qq), var in w.items() if qq == q]
        if inflow:
            prob += pulp.lpSum(inflow) <= pulp.lpSum(rated), f"capacity_{q}"
    for t in sorted({it.tp for it in items}):
        used = pulp.lpSum(it.tp * n[k] for k, it in enumerate(items) if it.tp >= t)
        prob += used <= inv.slots(t), f"gpus_tp{t}"
    objective = pulp.lpSum(it.power_w * n[k] for k, it in enumerate(items))
    objective += pulp.lpSum(it.power_w * f[k] for k, it in enumerate(problem.fixed_items))
    objective += s.unserved_penalty_w_per_rps * pulp.lpSum(w.values())
    spilled = [demand[r] * z[(r, q)] - var for (r, q), var in w.items() if r != q]
    objective += s.spill_cost_w_per_rps * pulp.lpSum(spilled)
    if problem.current:
        objective += _reconfiguration(prob, problem, n)
    prob += objective
    return model


def _all_or_nothing(prob: pulp.LpProblem, problem: Problem, r: str) -> dict[tuple[str, str], pulp.LpVariable | int]:
    """Type ``r``'s load goes to ONE pool of its routes, all or nothing, as the gateway routes it (the
    routes share ``r``'s TTFT target, so the host's SLO-feasible ratings hold for ``r`` too)."""
    routes = problem.routes(r)
    if len(routes) < 2:
        return {(r, q): 1 for q in routes}
    z = {q: prob.add_variable(f"z_{r}_{q}", cat=pulp.LpBinary) for q in routes}
    prob += pulp.lpSum(z.values()) == 1, f"one_route_{r}"
    return {(r, q): var for q, var in z.items()}


def _reconfiguration(prob: pulp.LpProblem, problem: Problem, n: list[pulp.LpVariable]) -> pulp.LpAffineExpression:
    """Energy (as W over the period) of moving from the current plan to the new one."""
    s = problem.settings
    per_config: dict[Config, list[pulp.LpVariable]] = defaultdict(list)
    for k, it in enumerate(problem.items):
        per_config[it.config].append(n[k])
    configs = set(per_config) | {c for c, m in problem.current.items() if m > 0}
    groups: dict[tuple[str, int], list[Config]] = defaultdict(list)
    for c in configs:
        groups[(c[0], c[1])].append(c)
    cost: list[pulp.LpAffineExpression] = []
    reshard_room: dict[str, list[pulp.LpVariable]] = defaultdict(list)
    reshards: dict[str, list[pulp.LpVariable]] = defaultdict(list)
    for (pool, tp), cfgs in sorted(groups.items()):
        tag = f"{pool}_{tp}"
        new = pulp.lpSum(pulp.lpSum(per_config[c]) for c in cfgs)
        old = sum(problem.current.get(c, 0) for c in cfgs)
        started = prob.add_variable(f"start_{tag}", lowBound=0)
        removed = prob.add_variable(f"remove_{tag}", lowBound=0, upBound=old)
        reshard = prob.add_variable(f"reshard_{tag}", lowBound=0)
        prob += started - removed == new - old, f"start_{tag}"
        prob += reshard <= started, f"reshard_le_start_{tag}"
        reshard_room[pool].append(removed)
        reshards[pool].append(reshard)
        moved = []
        for c in cfgs:
            v = prob.add_variable(f"clock_{tag}_{c[2]}", lowBound=0)
            prob += v >= pulp.lpSum(per_config[c]) - problem.current.get(c, 0), f"clock_{tag}_{c[2]}"
            moved.append(v)
        # an instance new to a clock is either started (priced below) or re-clocked
        reclocked = prob.add_variable(f"reclock_{tag}", lowBound=0)
        prob += reclocked >= pulp.lpSum(moved) - started, f"reclock_{tag}"
        cost.append(s.clock_change_cost_j * reclocked)
        cost.append(s.start_cost_j_per_gpu * tp * started)
        cost.append(-(s.start_cost_j_per_gpu - s.reshard_cost_j_per_gpu) * tp * reshard)
    for pool, moves in reshards.items():
        prob += pulp.lpSum(moves) <= pulp.lpSum(reshard_room[pool]), f"reshard_room_{pool}"
    return (1.0 / s.amortization_s) * pulp.lpSum(cost)
