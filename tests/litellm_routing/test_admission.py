"""The LiteLLM routing admits by the plan with the gateway's rule (``routing.plan_limits``)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.litellm_routing.test_core import deployment, pick, plan, record, routing

FLEET = [record("ss-1", "SS", 1), record("sm-1", "SM", 2)]
DEPLOYMENTS = [deployment(1), deployment(2)]
LOADS = {"ss-1": ("SS", 0.5), "sm-1": ("SM", 0.5)}  # 1 request each at a 2 s window


@pytest.mark.parametrize(
    ("window_s", "picked"),
    [
        (2.0, [2, 1, 2]),  # sm-1 full after one: the next goes to SS (its route's next pool), then both are full
        (0.0, [2, 2, 2]),  # admission off: the plan's pool takes them all
    ],
)
def test_a_burst_spills_to_the_next_pool_of_the_plan(window_s: float, picked: list[int]) -> None:
    core = routing(admission_window_s=window_s)
    core.apply_registry(FLEET)
    core.apply_plan(plan({"SM": ["SS", "SM"]}, loads=LOADS))  # SS's load goes to pool SM first
    assert core.instances["sm-1"].limit == (1.0 if window_s else math.inf)
    got = []
    for _ in picked:
        kwargs: dict[str, Any] = {"max_tokens": 8}  # an SS request
        (chosen,) = pick(core, DEPLOYMENTS, kwargs)
        got.append(DEPLOYMENTS.index(chosen) + 1)
    assert got == picked


LONG = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 2000}]  # a long input: an LS request


@pytest.mark.parametrize(
    ("spill_any", "picked"),
    [
        (True, [1, 2, 1]),  # ls-1 full after one: the next goes to pool SS (off the route), then both are full
        (False, [1, 1, 1]),  # LS's route (its spill chain, long inputs only) has no other instance: it queues
    ],
)
def test_work_conserving_spill_takes_a_pool_off_the_route(spill_any: bool, picked: list[int]) -> None:
    core = routing(admission_window_s=2.0, spill_any=spill_any)
    core.apply_registry([record("ls-1", "LS", 1), record("ss-1", "SS", 2), record("ss-2", "SS", 3, state="asleep")])
    core.apply_plan(plan({"LS": ["LS"]}, loads={"ls-1": ("LS", 0.5), "ss-1": ("SS", 0.5)}))
    deployments = [deployment(1), deployment(2), deployment(3)]
    got = []
    for _ in picked:
        (chosen,) = core.pick("chat", deployments, LONG, {"max_tokens": 8}, now=100.0, wall=1.0e9)
        got.append(deployments.index(chosen) + 1)
    assert got == picked
