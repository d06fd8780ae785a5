"""Replays with answers known by hand, and invariants every policy must keep (all figures modelled)."""

from __future__ import annotations

import random

import pytest

from wattgate.planner.model import Group
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import REQUEST_TYPES, RequestType, SloTargets
from wattgate.simulate.confusion import Confusion
from wattgate.simulate.engine import Arrival, Cluster, Result
from wattgate.simulate.model import TYPE_INDEX, Costs, Model
from wattgate.simulate.policies import POLICIES
from wattgate.simulate.run import SimSettings, simulate
from wattgate.simulate.trace import Request, SimulateError

SS = RequestType.parse("SS")


def constant(rate_rps: float, seconds: int, input_tokens: int = 100, output_tokens: int = 50) -> list[Request]:
    n = int(rate_rps * seconds)
    return [Request(k / rate_rps, input_tokens, output_tokens) for k in range(n)]


def mixed(seconds: int, seed: int = 1) -> list[Request]:
    """Poisson arrivals, ~3 req/s, token counts drawn across all nine types; load steps up half-way."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while t < seconds:
        t += rng.expovariate(2.0 if t < seconds / 2 else 4.0)
        out.append(Request(t, rng.choice([200, 800, 2000]), rng.choice([40, 200, 600])))
    return out


def test_constant_short_load_runs_on_one_tp2_instance_at_a_low_clock() -> None:
    """1 req/s of SS: by hand, one TP2 instance carries it (TP2 SS is SLO-feasible up to ~3.8 req/s),
    at the clock with the lowest modelled power that meets the SLO at 1 req/s."""
    profile, slo = load_builtin(), SloTargets()
    feasible = [c for c in profile.clocks(2, SS) if profile.max_load(2, c, SS, slo) >= 1.0]
    clock = min(feasible, key=lambda c: profile.lookup(2, c, SS, 1.0).power_w)
    assert clock < profile.clocks(2, SS)[-1]  # a low clock, not the highest
    power_w = profile.lookup(2, clock, SS, 1.0).power_w
    seconds = 1200
    settings = SimSettings(gpus=16, confusion=Confusion.perfect())
    (r,) = simulate(constant(1.0, seconds), profile, ["wattgate"], settings)
    assert r.gpu_seconds == 2 * r.duration_s  # one TP2 instance all along, nothing started
    assert r.starts == 0 and r.reshards == 0
    # Energy: that instance at that clock and load, except the first minute's ramp-up of its load window.
    assert r.energy_j == pytest.approx(power_w * r.duration_s, rel=0.03)
    assert max(r.ttft_s) <= slo.ttft_for(SS)


def test_single_pool_baseline_is_tp8_at_max_clock() -> None:
    profile = load_builtin()
    (r,) = simulate(constant(1.0, 600), profile, ["single-pool"], SimSettings(gpus=16))
    assert r.gpu_seconds == 8 * r.duration_s
    top = profile.clocks(8, SS)[-1]
    assert r.energy_j == pytest.approx(profile.lookup(8, top, SS, 1.0).power_w * r.duration_s, rel=0.05)


@pytest.fixture(scope="module")
def all_policies() -> list[Result]:
    settings = SimSettings(gpus=128, solver_time_limit_s=0.5)
    return simulate(mixed(1800), load_builtin(), list(POLICIES), settings)


def test_every_request_finishes_and_none_is_served_before_it_arrives(all_policies: list[Result]) -> None:
    arrivals = sorted(r.arrival_s for r in mixed(1800))
    for r in all_policies:
        assert len(r.finish_s) == len(arrivals), r.name
        for arrival, begin, finish in zip(arrivals, r.start_s, r.finish_s, strict=True):
            assert arrival <= begin <= finish, r.name
        assert all(x > 0 for x in r.ttft_s)


def test_no_per_type_pool_policy_uses_less_energy_than_the_oracle(all_policies: list[Result]) -> None:
    """The oracle is the floor of wattgate's own design space (per-type pools). It is not a floor for
    one generic pool: on this mix, where all nine types arrive at ~0.3 req/s each, nine pools
    fragment and the static TP8 pool with the clock policy (scale-freq) uses less (see README)."""
    oracle = next(r for r in all_policies if r.name == "oracle")
    for r in all_policies:
        if r.name in ("wattgate", "multi-pool"):
            assert r.energy_j >= oracle.energy_j * 0.999, r.name


def test_reconfiguring_policies_save_energy_against_the_baseline(all_policies: list[Result]) -> None:
    by = {r.name: r for r in all_policies}
    base = by["single-pool"].energy_j
    assert by["multi-pool"].energy_j > base  # fragmentation: every pool needs its own TP8
    for name in ("scale-freq", "wattgate"):
        assert by[name].energy_j < base, name
    assert by["scale-freq"].clock_changes > 0 and by["single-pool"].clock_changes == 0


def test_unknown_policy_and_empty_workload_are_errors() -> None:
    with pytest.raises(SimulateError, match="unknown policy"):
        simulate(constant(1.0, 10), load_builtin(), ["fastest"])
    with pytest.raises(SimulateError, match="no requests"):
        simulate([], load_builtin(), ["oracle"])


def test_spill_chain_routing_keeps_the_invariants() -> None:
    reqs = mixed(900, seed=3)
    settings = SimSettings(gpus=128, solver_time_limit_s=0.5, plan_routing=False)
    (r,) = simulate(reqs, load_builtin(), ["wattgate"], settings)
    assert len(r.finish_s) == len(reqs)
    assert all(a.arrival_s <= b for a, b in zip(sorted(reqs), r.start_s, strict=True))


@pytest.mark.parametrize(("plan_routing", "served_in"), [(True, "SL"), (False, "SM")])
def test_a_type_goes_where_the_plan_sends_it_as_in_the_gateway(plan_routing: bool, served_in: str) -> None:
    """The plan sends SM's load to pool SL while pool SM still has an instance (it serves nothing of
    the plan): the gateway's plan routing puts SM requests on SL; the spill chain alone keeps them on SM."""
    profile = load_builtin()
    clock = profile.clocks(2, SS)[-1]
    groups = (Group("SM", 2, clock, 1, 1.0, 100.0), Group("SL", 2, clock, 1, 1.0, 100.0))
    flows = {"SM": {"SL": 1.0}, "SL": {"SL": 0.5}}
    cluster = Cluster(Model(profile, SloTargets()), 16, Costs(), False, Result("t", 10), plan_routing)
    cluster.apply((groups, flows), 0.0, first=True)
    sm = TYPE_INDEX["SM"]
    for k in range(5):
        cluster.route(Arrival(k * 0.1, sm, sm, 100, 200))
    by_pool = {i.pool: sum(i.counts) for i in cluster.instances}
    assert by_pool[served_in] == 5
    assert sum(by_pool.values()) == 5


def test_less_headroom_runs_more_capacity_and_the_clock_policy_keeps_it() -> None:
    """headroom 0.6: the planner rates every instance at 60% of its SLO capacity and the clock policy
    keeps the same share free, so wattgate runs more GPUs or higher clocks than at 1.0 (modelled)."""
    reqs, profile = mixed(900, seed=5), load_builtin()
    runs = {
        h: simulate(reqs, profile, ["wattgate"], SimSettings(gpus=128, solver_time_limit_s=0.5, headroom=h))[0]
        for h in (1.0, 0.6)
    }
    assert runs[0.6].energy_j > runs[1.0].energy_j
    assert runs[0.6].gpu_seconds > runs[1.0].gpu_seconds

    def misses(r: Result) -> int:
        slo = SloTargets()
        return sum(
            x > slo.ttft_for(REQUEST_TYPES[t]) or b > slo.tbt_p99_s
            for t, x, b in zip(r.types, r.ttft_s, r.tbt_s, strict=True)
        )

    assert misses(runs[0.6]) < misses(runs[1.0])  # more room: fewer requests over their targets (modelled)
    with pytest.raises(SimulateError, match="headroom"):
        SimSettings(headroom=0.0)


def test_the_replay_weighs_instances_by_their_planned_load_as_the_gateway() -> None:
    profile = load_builtin()
    clock = profile.clocks(2, SS)[-1]
    groups = (Group("ML", 4, clock, 1, 1.5, 900.0), Group("ML", 2, clock, 1, 0.5, 500.0))
    for plan_routing, expected in ((True, {4: 1.5, 2: 0.5}), (False, {4: 1.0, 2: 1.0})):
        cluster = Cluster(Model(profile, SloTargets()), 16, Costs(), False, Result("t", 10), plan_routing)
        cluster.apply((groups, {"ML": {"ML": 2.0}}), 0.0, first=True)
        assert {i.tp: i.route.weight for i in cluster.instances} == expected
