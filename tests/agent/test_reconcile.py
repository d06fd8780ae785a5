"""Reconcile's pure diff: ordering, no-ops, replacements and refused placements."""

from __future__ import annotations

from dataclasses import replace

from wattgate.agent.reconcile import ActionKind, Actual, diff
from wattgate.planner.contract import InstanceState, PlannedInstance

GPUS = list(range(8))


def planned(iid: str, gpus: list[int], pool: str = "SS", clock: int = 1200) -> PlannedInstance:
    return PlannedInstance(iid, pool, "n1", gpus, len(gpus), clock, 1.0, 400.0)


def actual(iid: str, gpus: list[int], pool: str = "SS") -> Actual:
    return Actual(iid, pool, tuple(gpus), len(gpus))


def kinds(d) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(a.kind.value, a.instance_id) for a in d.actions]


def test_unchanged_plan_is_a_no_op() -> None:
    d = diff([planned("a", [0, 1])], {"a": actual("a", [0, 1])}, GPUS)
    assert d.actions == () and d.problems == ()


def test_order_is_drain_stop_clock_start_wait_register() -> None:
    d = diff(
        [planned("new1", [0, 1], clock=1000), planned("new2", [2, 3])],
        {"old1": actual("old1", [0, 1, 2, 3]), "old2": actual("old2", [4])},
        GPUS,
    )
    assert kinds(d) == [
        ("drain", "old1"),
        ("stop", "old1"),
        ("set_clock", "new1"),
        ("start", "new1"),
        ("set_clock", "new2"),
        ("start", "new2"),
        ("wait_healthy", "new1"),
        ("register", "new1"),
        ("wait_healthy", "new2"),
        ("register", "new2"),
        ("drain", "old2"),  # blocks no new instance: it serves until the new ones are up
        ("stop", "old2"),
    ]
    clock = next(a for a in d.actions if a.kind is ActionKind.SET_CLOCK)
    assert clock.gpus == (0, 1) and clock.sm_clock_mhz == 1000


def test_new_instances_on_free_gpus_come_up_before_the_drain() -> None:
    d = diff(
        [planned("new-free", [4, 5]), planned("new-busy", [0])],
        {"old": actual("old", [0, 1])},
        GPUS,
    )
    assert kinds(d) == [
        ("set_clock", "new-free"),
        ("start", "new-free"),
        ("wait_healthy", "new-free"),
        ("register", "new-free"),
        ("drain", "old"),
        ("stop", "old"),
        ("set_clock", "new-busy"),
        ("start", "new-busy"),
        ("wait_healthy", "new-busy"),
        ("register", "new-busy"),
    ]


def test_changed_placement_or_pool_is_replaced() -> None:
    d = diff(
        [planned("a", [0, 1, 2, 3]), planned("b", [4], pool="SM")],
        {"a": actual("a", [0, 1]), "b": actual("b", [4], pool="SS")},
        GPUS,
    )
    assert kinds(d) == [
        ("drain", "a"),
        ("stop", "a"),
        ("set_clock", "a"),
        ("start", "a"),
        ("wait_healthy", "a"),
        ("register", "a"),
        ("drain", "b"),  # b keeps serving until a's replacement is up
        ("stop", "b"),
        ("set_clock", "b"),
        ("start", "b"),
        ("wait_healthy", "b"),
        ("register", "b"),
    ]


def test_a_plan_replacing_every_instance_rolls_wave_by_wave() -> None:
    """Regression: every GPU of the node re-planned (3 x TP2 -> 2 x TP4) drained all three old
    instances at once, leaving nothing routable until the new ones were up (the gateway answered 503)."""
    d = diff(
        [planned("sl-tp4-a", [0, 1, 2, 3], pool="SL"), planned("sl-tp4-b", [4, 5, 6, 7], pool="SL")],
        {
            "ll": actual("ll", [0, 1], pool="LL"),
            "ml": actual("ml", [2, 3], pool="ML"),
            "sl": actual("sl", [4, 5], pool="SL"),
        },
        GPUS,
    )
    assert kinds(d) == [
        ("drain", "ll"),
        ("drain", "ml"),
        ("stop", "ll"),
        ("stop", "ml"),
        ("set_clock", "sl-tp4-a"),
        ("start", "sl-tp4-a"),
        ("wait_healthy", "sl-tp4-a"),
        ("register", "sl-tp4-a"),
        ("drain", "sl"),  # serves until sl-tp4-a is ready
        ("stop", "sl"),
        ("set_clock", "sl-tp4-b"),
        ("start", "sl-tp4-b"),
        ("wait_healthy", "sl-tp4-b"),
        ("register", "sl-tp4-b"),
    ]


def test_clock_change_alone_does_not_restart() -> None:
    d = diff([planned("a", [0], clock=1800)], {"a": actual("a", [0])}, GPUS)
    assert d.actions == ()  # with a clock loop, it owns running instances' clocks
    d = diff([planned("a", [0], clock=1800)], {"a": actual("a", [0])}, GPUS, follow_plan_clocks=True)
    assert kinds(d) == [("set_clock", "a")] and d.actions[0].sm_clock_mhz == 1800
    same = Actual("a", "SS", (0,), 1, planned_clock_mhz=1800)
    assert diff([planned("a", [0], clock=1800)], {"a": same}, GPUS, follow_plan_clocks=True).actions == ()


def test_bad_placements_are_refused_with_a_reason() -> None:
    d = diff(
        [
            planned("a", [0, 1]),
            planned("b", [1, 2]),  # overlaps a
            planned("c", [9]),  # not on this node
            PlannedInstance("d", "SS", "n1", [3, 4], 4, 1200, 1.0, 1.0),  # TP4 on 2 GPUs
        ],
        {},
        GPUS,
    )
    assert [a.instance_id for a in d.actions if a.kind is ActionKind.START] == ["a"]
    assert len(d.problems) == 3
    assert any("already planned" in p for p in d.problems)
    assert any("not all on this node" in p for p in d.problems)
    assert any("TP4 on 2 GPUs" in p for p in d.problems)


def test_empty_plan_stops_everything() -> None:
    d = diff([], {"a": actual("a", [0])}, GPUS)
    assert kinds(d) == [("drain", "a"), ("stop", "a")]


def standby(iid: str, gpus: list[int], pool: str = "SS", clock: int = 1200) -> PlannedInstance:
    return PlannedInstance(iid, pool, "n1", gpus, len(gpus), clock, 0.0, 80.0, standby=True)


def state(iid: str, gpus: list[int], st: InstanceState, *, on_standby: bool, clock: int = 1200) -> Actual:
    return Actual(iid, "SS", tuple(gpus), len(gpus), clock, st, on_standby)


def test_active_to_standby_drains_then_sleeps_and_nothing_more() -> None:
    d = diff([standby("a", [0, 1])], {"a": actual("a", [0, 1])}, GPUS, can_sleep=True)
    assert kinds(d) == [("drain", "a"), ("sleep", "a")] and d.problems == ()
    sleep = d.actions[1]
    assert sleep.planned is not None and sleep.planned.standby
    asleep = {"a": state("a", [0, 1], InstanceState.ASLEEP, on_standby=True)}
    assert diff([standby("a", [0, 1])], asleep, GPUS, can_sleep=True).actions == ()  # stays asleep


def test_standby_to_active_wakes_in_place_with_the_plans_clock() -> None:
    asleep = {"a": state("a", [0, 1], InstanceState.ASLEEP, on_standby=True, clock=800)}
    d = diff([planned("a", [0, 1], clock=1400)], asleep, GPUS, follow_plan_clocks=True, can_sleep=True)
    assert kinds(d) == [("set_clock", "a"), ("wake", "a"), ("wait_healthy", "a"), ("register", "a")]
    assert d.actions[0].sm_clock_mhz == 1400
    # waking is a wake-up even when sleeping has since been turned off on the node (no restart)
    assert kinds(diff([planned("a", [0, 1])], asleep, GPUS, can_sleep=False))[1] == ("wake", "a")


def test_a_new_standby_instance_starts_then_sleeps_without_registering() -> None:
    d = diff([standby("s", [2])], {}, GPUS, can_sleep=True)
    assert kinds(d) == [("set_clock", "s"), ("start", "s"), ("wait_healthy", "s"), ("sleep", "s")]


def test_wakes_come_first_and_sleeps_after_new_instances_are_up() -> None:
    act = {
        "sleeping": state("sleeping", [0], InstanceState.ASLEEP, on_standby=True),
        "serving": actual("serving", [1]),
        "old": actual("old", [3]),
    }
    d = diff([planned("sleeping", [0]), standby("serving", [1]), planned("new", [2])], act, GPUS, can_sleep=True)
    assert kinds(d) == [
        ("set_clock", "sleeping"),
        ("wake", "sleeping"),
        ("wait_healthy", "sleeping"),
        ("register", "sleeping"),
        ("set_clock", "new"),
        ("start", "new"),
        ("wait_healthy", "new"),
        ("register", "new"),
        ("drain", "serving"),
        ("sleep", "serving"),
        ("drain", "old"),
        ("stop", "old"),
    ]


def test_an_asleep_instance_leaving_is_stopped_without_a_drain() -> None:
    act = {"a": state("a", [0], InstanceState.ASLEEP, on_standby=True)}
    assert kinds(diff([], act, GPUS, can_sleep=True)) == [("stop", "a")]
    moved = diff([standby("a", [0, 1])], act, GPUS, can_sleep=True)  # a new TP: a restart, asleep again after
    assert kinds(moved) == [("stop", "a"), ("set_clock", "a"), ("start", "a"), ("wait_healthy", "a"), ("sleep", "a")]


def test_standby_on_a_node_that_cannot_sleep_is_refused_and_kept_stopped() -> None:
    d = diff([standby("s", [0]), planned("a", [1])], {"s": actual("s", [0])}, GPUS, can_sleep=False)
    up = [("set_clock", "a"), ("start", "a"), ("wait_healthy", "a"), ("register", "a")]
    assert kinds(d) == [*up, ("drain", "s"), ("stop", "s")]
    assert (
        len(d.problems) == 1 and d.problems[0].startswith("s: planned on standby") and "--sleep-mode" in d.problems[0]
    )
    asleep = {"s": state("s", [0], InstanceState.ASLEEP, on_standby=True)}
    kept = diff([standby("s", [0])], asleep, GPUS, can_sleep=False)  # one already asleep stays asleep
    assert kept.actions == () and kept.problems == ()


def test_an_instance_neither_serving_nor_asleep_only_takes_the_wish() -> None:
    failed = {"a": state("a", [0], InstanceState.FAILED, on_standby=False)}
    d = diff([standby("a", [0])], failed, GPUS, can_sleep=True)
    assert kinds(d) == [("sleep", "a")]  # the actuator records it; the restart then goes to sleep
    wished = {"a": state("a", [0], InstanceState.FAILED, on_standby=True)}
    assert diff([standby("a", [0])], wished, GPUS, can_sleep=True).actions == ()
    assert kinds(diff([planned("a", [0])], wished, GPUS, can_sleep=True)) == [("wake", "a")]


def test_a_clock_floor_raises_the_clock_of_agents_that_follow_the_plans_clocks_and_its_end_lowers_it() -> None:
    """The reactive path's clock floor (a plan amendment): without a clock loop the agent locks the floor where it
    is above the planned clock, and the planned clock again once the floor is gone; new instances start at it."""
    floored = replace(planned("a", [0], clock=1200), clock_floor_mhz=1980)
    running = Actual("a", "SS", (0,), 1, planned_clock_mhz=1200)
    d = diff([floored], {"a": running}, GPUS, follow_plan_clocks=True)
    assert [(a.kind, a.sm_clock_mhz) for a in d.actions] == [(ActionKind.SET_CLOCK, 1980)]
    held = Actual("a", "SS", (0,), 1, planned_clock_mhz=1980)
    assert diff([floored], {"a": held}, GPUS, follow_plan_clocks=True).actions == ()
    lifted = diff([planned("a", [0], clock=1200)], {"a": held}, GPUS, follow_plan_clocks=True)
    assert [(a.kind, a.sm_clock_mhz) for a in lifted.actions] == [(ActionKind.SET_CLOCK, 1200)]
    assert diff([floored], {"a": running}, GPUS).actions == ()  # with a clock loop: the loop honours it
    new = diff([replace(planned("b", [1], clock=1200), clock_floor_mhz=1980)], {}, GPUS)
    assert new.actions[0].kind is ActionKind.SET_CLOCK and new.actions[0].sm_clock_mhz == 1980
