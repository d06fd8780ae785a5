"""The reactive path's decision (``planner.reactive.react``, pure): clocks first, an instance after, stand-down,
nothing on a missing or stale signal; and the leader's amendments (``planner.amend``) on a real Redis."""

from __future__ import annotations

import pytest
import redis

from tests.planner.toy import toy_profile
from wattgate.planner.amend import ReactivePath
from wattgate.planner.contract import Keys, Observation, Plan, PlannedInstance
from wattgate.planner.model import Inventory, Node, PlannerError
from wattgate.planner.reactive import Member, Memory, PoolSignal, ReactSettings, forget, react
from wattgate.planner.store import PlannerStore
from wattgate.profiles.classes import SloTargets

S = ReactSettings()  # pressure 0.5, hold 60 s, cooldown 60 s, signals up to 15 s old
TOP = 1980


def pool(
    waited: float | None, *clocks: int, at: float = 0.0, name: str = "SS", tps: tuple[int, ...] = ()
) -> PoolSignal:
    tps = tps or (2,) * len(clocks)
    members = tuple(Member(f"{name}-{i}", tp, c, TOP) for i, (tp, c) in enumerate(zip(tps, clocks, strict=True)))
    return PoolSignal(name, waited, 1.0, at, members)


def test_a_waiting_pool_gets_top_clocks_first_and_one_instance_only_when_the_signal_persists() -> None:
    first = react([pool(0.6, 1200, 1400)], Memory(), 0.0, S)
    assert first.raised == ("SS",) and first.add == ()  # clocks first: no instance yet
    assert first.floors == {"SS-0": TOP, "SS-1": TOP}

    # five seconds later the caller applied the floors; the pool still waits: one more instance
    second = react([pool(0.7, TOP, TOP, at=5.0, tps=(2, 4))], first.memory, 5.0, S)
    assert [(a.pool, a.tp, a.clock_mhz) for a in second.add] == [("SS", 4, TOP)]  # the largest TP, at its top
    memory = second.memory.added("SS", "SS-new", 5.0, S)
    assert memory.held("SS-new", 6.0)  # the new one is held at the top too

    # still waiting: no second instance inside the cooldown, one after it
    third = react([pool(0.9, TOP, TOP, at=10.0)], memory, 10.0, S)
    assert third.raised == ("SS",) and third.add == ()
    later = react([pool(0.9, TOP, TOP, at=65.0)], third.memory, 65.0, S)
    assert len(later.add) == 1


def test_below_the_pressure_nothing_happens_and_holds_run_out_into_a_stand_down() -> None:
    calm = react([pool(0.49, 1200)], Memory(), 0.0, S)
    assert calm.raised == calm.add == calm.stand_down == () and calm.floors == {}

    held = react([pool(0.5, 1200)], Memory(), 0.0, S).memory
    still = react([pool(0.1, TOP, at=30.0)], held, 30.0, S)
    assert still.floors == {"SS-0": TOP} and still.stand_down == ()  # within the hold: kept at the top
    # the hold ends 60 s after the last signal that asked for it
    done = react([pool(0.1, TOP, at=60.0)], still.memory, 60.0, S)
    assert done.stand_down == ("SS-0",) and done.floors == {} and not done.memory.held("SS-0", 60.0)

    # a renewed signal renews the hold
    renewed = react([pool(0.6, TOP, at=50.0)], held, 50.0, S)
    assert renewed.memory.held("SS-0", 100.0)


def test_a_raised_clock_that_was_not_held_is_not_a_reason_to_add() -> None:
    """A pool the plan (or clock loop) already runs at the top clock is raised (held) first, not grown."""
    r = react([pool(0.8, TOP, TOP)], Memory(), 0.0, S)
    assert r.raised == ("SS",) and r.add == ()
    # one member not at its top yet (a new instance at the plan's clock): held again, not grown
    r2 = react([pool(0.8, TOP, 1200, at=5.0)], r.memory, 5.0, S)
    assert r2.add == ()


@pytest.mark.parametrize(
    "signal",
    [
        pool(None, 1200),  # no signal (no request of the pool finished in the window)
        pool(5.0, 1200, at=-20.0),  # a signal older than 15 s
        PoolSignal("SS", 5.0, 1.0, 0.0, ()),  # no serving instance
    ],
)
def test_no_action_on_a_missing_or_stale_signal(signal: PoolSignal) -> None:
    r = react([signal], Memory(), 0.0, S)
    assert r.raised == r.add == () and r.floors == {}


def test_pools_are_judged_each_by_its_own_signal_and_target() -> None:
    ss = pool(0.6, 1200, name="SS")
    ml = PoolSignal("ML", 0.6, 2.0, 0.0, (Member("ML-0", 4, 1200, TOP),))  # 0.6 s of a 2 s target: calm
    r = react([ss, ml], Memory(), 0.0, S)
    assert r.raised == ("SS",) and r.floors == {"SS-0": TOP}


def test_forget_drops_the_holds_of_instances_that_are_gone() -> None:
    m = react([pool(0.6, 1200, 1200)], Memory(), 0.0, S).memory
    assert set(forget(m, ["SS-1"]).held_until) == {"SS-1"}


def test_settings_are_checked() -> None:
    with pytest.raises(PlannerError):
        ReactSettings(pressure=0)
    with pytest.raises(PlannerError):
        ReactSettings(window_s=0)


def _publish(url: str, *instances: PlannedInstance) -> PlannerStore:
    store = PlannerStore(url)
    store.publish(lambda v: Plan(v, 0.0, "toy", list(instances), {"SS": 1.0}, 1000.0, 2000.0, reasons=["solved"]))
    return store


def _waited(url: str, now: float, ttft_s: float | None) -> None:
    r = redis.Redis.from_url(url)
    obs = Observation(f"r{now}", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, ttft_s, None, 200, "a", "m", now)
    r.xadd(Keys().observations, {"json": obs.to_json()})
    r.xadd(Keys().observations, {"json": "{not json"})  # skipped
    r.close()


def test_the_leaders_amendment_wakes_a_standby_instance_of_the_pool_as_the_one_more(redis_url: str) -> None:
    serving = PlannedInstance("a", "SS", "n1", [0, 1], 2, 1000, 2.0, 600.0)
    asleep = PlannedInstance("s", "SS", "n1", [2, 3], 2, 1000, 0.0, 500.0, standby=True)
    store = _publish(redis_url, serving, asleep)
    path = ReactivePath(toy_profile(pools=("SS",)), SloTargets(), S)
    full = Inventory((Node("n1", 4),))  # no GPU free but the sleeper's
    try:
        _waited(redis_url, 99.0, None)  # no first token: no signal
        assert path.step(store, full, 100.0) is None
        _waited(redis_url, 104.0, 0.2)  # 0.2 s of SS's 0.25 s target
        raised = path.step(store, full, 105.0)
        assert raised is not None and [(i.id, i.clock_floor_mhz, i.standby) for i in raised.instances] == [
            ("a", 2000, False),
            ("s", 0, True),
        ]
        assert raised.reasons[0] == "solved" and raised.reasons[1].startswith("reactive path: SS")
        _waited(redis_url, 109.0, 0.2)
        grown = path.step(store, full, 110.0)
        assert grown is not None and [(i.id, i.clock_floor_mhz, i.standby) for i in grown.instances] == [
            ("a", 2000, False),
            ("s", 2000, False),  # planned active again: its agent wakes it
        ]
        # modelled: it was counted at its sleeping power (500 W), now at the pool's mean planned power (600 W)
        assert grown.predicted_power_w == pytest.approx(raised.predicted_power_w + 100.0)
        _waited(redis_url, 114.0, 0.2)
        assert path.step(store, full, 115.0) is None  # cooldown: nothing new to publish
        # a scheduled plan keeps the floors still held
        assert [i.clock_floor_mhz for i in path.carry([serving], 116.0)] == [2000]
        assert [i.clock_floor_mhz for i in path.carry([serving], 200.0)] == [0]
    finally:
        store.close()


def test_without_free_gpus_the_pool_keeps_its_top_clocks_and_gets_no_instance(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _publish(redis_url, PlannedInstance("a", "SS", "n1", [0, 1], 2, 1000, 2.0, 600.0))
    path = ReactivePath(toy_profile(pools=("SS",)), SloTargets(), S)
    full = Inventory((Node("n1", 2),))
    try:
        _waited(redis_url, 104.0, 0.2)
        assert path.step(store, full, 105.0) is not None
        _waited(redis_url, 109.0, 0.2)
        assert path.step(store, full, 110.0) is None
        assert "no free GPUs" in caplog.text
    finally:
        store.close()


def test_recent_ttfts_reads_the_streams_last_minutes_and_the_requests_finished_since(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys()

    def obs(ts: float, ttft: float | None, pool: str = "SS") -> str:
        return Observation(f"r{ts}", pool, pool, [1.0, 0.0, 0.0], 10, 5, ttft, None, 200, "a", "m", ts).to_json()

    r.xadd(keys.observations, {"json": obs(250.0, 9.0)}, id="1000-0")  # flushed at t=1 s: long before
    r.xadd(keys.observations, {"json": obs(150.0, 8.0)}, id="250000-0")  # finished before the window
    r.xadd(keys.observations, {"json": obs(205.0, None)}, id="250000-1")  # no first token
    r.xadd(keys.observations, {"json": obs(206.0, 0.3, "SM")}, id="250000-2")
    r.xadd(keys.observations, {"json": "{}"}, id="250000-3")
    r.close()
    store = PlannerStore(redis_url)
    try:
        assert store.recent_ttfts(200.0) == [("SM", 0.3, 206.0)]
    finally:
        store.close()
