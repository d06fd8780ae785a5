"""The replay runs the agent's burst rule (``clock_policy.burst_until``): a burst of long prompts on an instance
the clock loop left at a low clock queues in its engine, the rule takes it to the top clock within a second,
and more of the burst meets its targets than with the rule off. Every figure is modelled."""

from __future__ import annotations

from tests.simulate.test_replay import SERVING
from wattgate.agent.clock_policy import BurstRule
from wattgate.planner.model import Group
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.servingmodel.cluster import Lifecycle
from wattgate.simulate.engine import Arrival, Behaviour, Result, replay
from wattgate.simulate.fleet import FixedFleet
from wattgate.simulate.model import TYPE_INDEX, Model
from wattgate.simulate.report import within_slo
from wattgate.simulate.run import SimSettings

LS = TYPE_INDEX["LS"]


def _burst(hold_s: float, rule: BurstRule | None = None) -> Result:
    """One TP8 instance in pool LS: a lone long prompt every 10 s for a minute (the clock loop idles it down),
    then 20 more within a second."""
    profile = load_builtin()
    model = Model(profile, SloTargets())
    quiet = [Arrival(float(k * 10), LS, LS, 2000, 30) for k in range(7)]
    burst = [Arrival(61.0 + k * 0.05, LS, LS, 2000, 30) for k in range(20)]
    low = profile.clocks(8, RequestType.parse("LS"))[0]
    group = Group("LS", 8, low, 1, 0.1, 500.0)
    return replay(
        f"burst-hold-{hold_s}",
        [*quiet, *burst],
        serving=SERVING,
        model=model,
        gpus=8,
        lifecycle=Lifecycle(),
        behaviour=Behaviour(clock_loop=True, burst=rule or BurstRule(hold_s)),
        epoch_s=None,
        plan=lambda _now, _running: ((group,), {"LS": {"LS": 1.0}}),
        edges=SimSettings().edges,
        fleet=FixedFleet.parse("1").instances,
    )


def test_the_burst_rule_raises_attainment_of_a_burst_on_a_slow_instance() -> None:
    off, on = _burst(0.0), _burst(5.0)
    ok_off, ok_on = within_slo(off, SloTargets()).sum(), within_slo(on, SloTargets()).sum()
    assert ok_on > ok_off
    assert off.clock_changes == 0  # the clock loop alone keeps its low clock through the burst (a minute's load)
    assert on.clock_changes >= 1  # the burst rule raised it
    assert max(on.ttft_s) < max(off.ttft_s)


def test_a_fixed_fleet_bursts_at_its_own_trigger() -> None:
    """The instance is a fixed server (``fleet``): ``min_waiting_fixed`` starts its bursts, ``min_waiting``
    (managed instances) does not."""
    fixed_trigger = _burst(5.0, BurstRule(5.0, min_waiting=1000, min_waiting_fixed=2))
    managed_trigger = _burst(5.0, BurstRule(5.0, min_waiting=2, min_waiting_fixed=1000))
    assert fixed_trigger.clock_changes >= 1
    assert managed_trigger.clock_changes == 0
