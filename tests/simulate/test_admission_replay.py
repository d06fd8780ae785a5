"""The replay routes by the gateway's admission rule (``routing.plan_limits``), not a copy of it: the plan's
loads give each replayed instance the gateway's limit, and a burst spills past a full pool as it would live."""

from __future__ import annotations

import pytest

from tests.simulate.test_replay import SERVING
from wattgate.gateway.routing import admission_limit
from wattgate.planner.model import Group
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.servingmodel.cluster import Lifecycle
from wattgate.simulate.engine import Arrival, Behaviour, Cluster, Result
from wattgate.simulate.fleet import FixedFleet
from wattgate.simulate.model import TYPE_INDEX, Model
from wattgate.simulate.run import SimSettings


def _burst(window_s: float) -> dict[str, int]:
    """Three MM requests within 0.2 s on a fixed fleet of two TP8 instances: one in pool MM, one in pool LL,
    each planned for 0.5 req/s. Returns pool -> MM requests its instance took."""
    profile = load_builtin()
    fleet = FixedFleet.parse("2")
    mm = TYPE_INDEX["MM"]
    arrivals = [Arrival(k * 0.1, mm, mm, 800, 200) for k in range(3)]
    model = Model(profile, SloTargets())
    behaviour = Behaviour(admission_window_s=window_s)
    r = Result("t", 10)
    cluster = Cluster(SERVING, model, 16, Lifecycle(), behaviour, r, SimSettings().edges, arrivals, fleet.instances)
    top = profile.clocks(8, RequestType.parse("MM"))[-1]
    plan = (Group("MM", 8, top, 1, 0.5, 1.0), Group("LL", 8, top, 1, 0.5, 1.0))
    cluster.apply((plan, {"MM": {"MM": 1.0}, "LL": {"LL": 1.0}}), 0.0, first=True)
    assert all(ri.route.limit == admission_limit(0.5, window_s) for ri in cluster.live.values())
    for k in range(3):
        cluster.route(k)
    return {ri.inst.pool: ri.counts[mm] for ri in cluster.live.values()}


@pytest.mark.parametrize(
    ("window_s", "took"),
    [
        (2.0, {"MM": 2, "LL": 1}),  # limit 1 each: the second spills to LL, the third queues on MM (all full)
        (0.0, {"MM": 3, "LL": 0}),  # admission off: the planned pool takes the whole burst
    ],
)
def test_a_burst_spills_past_a_full_pool_in_the_replay(window_s: float, took: dict[str, int]) -> None:
    assert _burst(window_s) == took


def test_the_replay_spills_a_full_route_to_any_pool_with_spill_any() -> None:
    """The replay passes ``Behaviour.spill_any`` to the gateway's ``choose``: three MM requests on a fixed
    fleet of an MM and an SS instance (SS is not on MM's route), each planned for 0.5 req/s (a limit of 1)."""
    took = {}
    for spill_any in (False, True):
        profile = load_builtin()
        mm = TYPE_INDEX["MM"]
        arrivals = [Arrival(k * 0.1, mm, mm, 800, 200) for k in range(3)]
        behaviour = Behaviour(admission_window_s=2.0, spill_any=spill_any)
        r = Result("t", 10)
        fleet = FixedFleet.parse("2").instances
        cluster = Cluster(
            SERVING, Model(profile, SloTargets()), 16, Lifecycle(), behaviour, r, SimSettings().edges, arrivals, fleet
        )
        top = profile.clocks(8, RequestType.parse("MM"))[-1]
        plan = (Group("MM", 8, top, 1, 0.5, 1.0), Group("SS", 8, top, 1, 0.5, 1.0))
        cluster.apply((plan, {"MM": {"MM": 1.0}, "SS": {"SS": 1.0}}), 0.0, first=True)
        for k in range(3):
            cluster.route(k)
        took[spill_any] = {ri.inst.pool: ri.counts[mm] for ri in cluster.live.values()}
    assert took[False] == {"MM": 3, "SS": 0}  # the route (MM's chain) has no other instance: all queue on MM
    assert took[True] == {"MM": 2, "SS": 1}  # the second goes to SS; the third, all full, queues on the route
