from __future__ import annotations

import json

import pytest
import redis

from wattgate.planner.contract import (
    HEARTBEAT_REVISION,
    OBSERVATION_REVISION,
    PLAN_REVISION,
    SCHEMA_VERSION,
    ContractError,
    GpuReading,
    Heartbeat,
    InstanceRecord,
    InstanceState,
    Keys,
    NodeTelemetry,
    Observation,
    Plan,
    PlannedInstance,
    UnmanagedInstance,
    decode_slots,
    encode_slots,
    load_field,
)


def test_keys_are_prefixed_and_versioned() -> None:
    keys = Keys("prod")
    assert keys.load_second(100) == "prod:v1:load:s:100"
    assert keys.heartbeat("node-a") == "prod:v1:node:node-a:heartbeat"
    assert load_field("SS", "requests") == "SS:requests"
    with pytest.raises(ContractError):
        load_field("SS", "bogus")


def test_plan_round_trips_through_a_real_redis(redis_url: str) -> None:
    plan = Plan(
        version=3,
        created_at=1.5,
        model="llama-2-70b",
        instances=[PlannedInstance("i1", "SS", "n0", [0, 1], 2, 1200, 1.5, 640.0)],
        forecast_rps={"SS": 1.5},
        predicted_power_w=640.0,
        baseline_power_w=2400.0,
    )
    client = redis.Redis.from_url(redis_url)
    client.set(Keys().plan, plan.to_json())
    again = Plan.from_json(client.get(Keys().plan) or b"")
    assert again == plan
    assert again.for_node("n0")[0].gpus == [0, 1]
    assert again.for_node("n1") == []


def test_messages_of_other_versions_are_refused() -> None:
    obs = Observation("r", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, 0.1, 0.02, 200, "i1", "m", 1.0)
    data = obs.to_dict()
    assert data["schema"] == SCHEMA_VERSION
    data["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ContractError, match="schema version"):
        Observation.from_json(json.dumps(data))
    with pytest.raises(ContractError, match="not valid JSON"):
        Observation.from_json(b"\xff")


def test_instance_record_validates_state() -> None:
    rec = InstanceRecord("i1", "http://127.0.0.1:1", "m", "SS", "n0", "ready")
    assert InstanceRecord.from_json(rec.to_json()).ready
    bad = rec.to_dict() | {"state": "zombie"}
    with pytest.raises(ContractError, match="unknown state"):
        InstanceRecord.from_json(bad)
    missing = {k: v for k, v in rec.to_dict().items() if k != "base_url"}
    with pytest.raises(ContractError):
        InstanceRecord.from_json(missing)


def test_plan_serves_defaults_to_empty_and_round_trips() -> None:
    plan = Plan(1, 0.0, "m", [], {"SS": 0.3}, 1.0, 2.0, serves={"SM": ["SM", "SS"]})
    back = Plan.from_json(plan.to_json())
    assert back.serves == {"SM": ["SM", "SS"]}
    old = plan.to_dict()
    del old["serves"]
    assert Plan.from_json(json.dumps(old)).serves == {}


def test_to_json_is_the_json_of_to_dict_for_flat_and_nested_messages() -> None:
    obs = Observation("r", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, 0.1, None, 200, "i1", "m", 1.0, {"f": 0.5}, 64)
    gpu = GpuReading(0, "GPU-0", "H100", 300.5, 12.0, 1410, None, "modelled")
    planned = PlannedInstance("i1", "SS", "n0", [0, 1], 2, 1200, 1.5, 400.0)
    standby = PlannedInstance("i2", "SS", "n0", [2], 1, 1200, 0.0, 80.0, standby=True)
    plan = Plan(3, 1.0, "m", [planned, standby], {"SS": 0.3}, 1.0, 2.0, serves={"SS": ["SS"]}, single_pool_gpus=8)
    beat = Heartbeat("ext", 1.0, 3, 8, True, managed=False, unmanaged=[UnmanagedInstance("e0", 4, [0, 1], "m")])
    for message in (obs, plan, beat, NodeTelemetry("n0", 1.0, [gpu], {"i1": "ready"})):
        assert message.to_json() == json.dumps(message.to_dict(), separators=(",", ":"), sort_keys=True)


def test_standby_round_trips_and_is_written_only_when_true() -> None:
    active = PlannedInstance("a", "SS", "n0", [0], 1, 1200, 2.0, 300.0)
    standby = PlannedInstance("s", "SS", "n0", [1], 1, 1200, 0.0, 80.0, standby=True)
    plan = Plan(4, 0.0, "m", [active, standby], {"SS": 2.0}, 380.0, 1000.0)
    wire = plan.to_dict()
    assert "standby" not in wire["instances"][0] and wire["instances"][1]["standby"] is True
    back = Plan.from_json(plan.to_json())
    assert back == plan and [i.standby for i in back.instances] == [False, True]
    # a plan with no standby instance reads as before: the exact keys an agent from before standby accepts
    old_keys = {"id", "pool", "node", "gpus", "tp", "sm_clock_mhz", "load_rps", "power_w"}
    lone = Plan(5, 0.0, "m", [active], {}, 0.0, 0.0).to_dict()
    assert set(lone["instances"][0]) == old_keys
    assert Plan.from_json(json.dumps(lone)).instances[0].standby is False


def test_plan_instances_ignore_unknown_fields_and_check_standby() -> None:
    doc = Plan(1, 0.0, "m", [PlannedInstance("a", "SS", "n0", [0], 1, 1200, 1.0, 1.0)], {}, 0.0, 0.0).to_dict()
    doc["instances"][0]["from_a_newer_planner"] = 7
    assert Plan.from_json(json.dumps(doc)).instances[0].id == "a"
    doc["instances"][0]["standby"] = "yes"
    with pytest.raises(ContractError, match="standby must be true or false"):
        Plan.from_json(json.dumps(doc))
    del doc["instances"][0]["gpus"]
    with pytest.raises(ContractError, match="bad instance"):
        Plan.from_json(json.dumps(doc))
    doc["instances"] = {"a": 1}
    with pytest.raises(ContractError, match="list of objects"):
        Plan.from_json(json.dumps(doc))


def test_asleep_is_a_state_that_is_not_ready_and_heartbeats_say_who_sleeps() -> None:
    rec = InstanceRecord("i1", "http://127.0.0.1:1", "m", "SS", "n0", InstanceState.ASLEEP.value)
    back = InstanceRecord.from_json(rec.to_json())
    assert back.state == "asleep" and not back.ready
    hb = Heartbeat("n0", 1.0, 3, 8, True, sleep_mode=True, asleep=["i1"])
    assert Heartbeat.from_json(hb.to_json()) == hb
    old = hb.to_dict()
    del old["sleep_mode"], old["asleep"]
    assert Heartbeat.from_json(json.dumps(old)) == Heartbeat("n0", 1.0, 3, 8, True)


def test_heartbeat_unmanaged_servers_round_trip_and_old_heartbeats_still_read() -> None:
    servers = [UnmanagedInstance("e0", 4, [0, 1, 2, 3], "m")]
    beat = Heartbeat("ext", 1.0, 3, 8, True, managed=False, unmanaged=servers, revision=HEARTBEAT_REVISION)
    back = Heartbeat.from_json(beat.to_json())
    assert back == beat and back.unmanaged[0].engine == "vllm" and back.unmanaged[0].pool == ""
    assert back.revision == 3
    old = beat.to_dict()
    del old["unmanaged"], old["managed"], old["revision"]
    legacy = Heartbeat.from_json(json.dumps(old))
    assert legacy.unmanaged == [] and legacy.revision == 1
    with pytest.raises(ContractError, match="unmanaged"):
        Heartbeat.from_json(beat.to_dict() | {"unmanaged": "e0"})
    with pytest.raises(ContractError, match="bad unmanaged instance"):
        Heartbeat.from_json(beat.to_dict() | {"unmanaged": [{"id": "e0"}]})


def test_plan_fixed_ids_default_empty_and_newer_fields_are_ignored() -> None:
    inst = PlannedInstance("e0", "SM", "ext", [0, 1], 2, 1200, 1.0, 500.0)
    plan = Plan(1, 0.0, "m", [inst], {"SM": 1.0}, 500.0, 900.0, fixed=["e0"], revision=PLAN_REVISION)
    back = Plan.from_json(plan.to_json())
    assert back.fixed == ["e0"] and back.fixed_pools() == {"e0": "SM"} and back.revision == 4
    old = plan.to_dict()
    del old["fixed"], old["revision"]
    legacy = Plan.from_json(json.dumps(old))
    assert legacy.fixed == [] and legacy.fixed_pools() == {} and legacy.revision == 1
    # a newer writer's extra fields, on the plan and on its instances, are ignored rather than refused
    newer = plan.to_dict() | {"later": 1}
    newer["instances"] = [{**newer["instances"][0], "later": True}]
    assert Plan.from_json(json.dumps(newer)) == plan
    with pytest.raises(ContractError, match="bad instance"):
        Plan.from_json(plan.to_dict() | {"instances": [{"id": "e0"}]})


def test_a_clock_floor_round_trips_is_written_only_when_set_and_is_checked() -> None:
    held = PlannedInstance("a", "SS", "n1", [0, 1], 2, 1200, 1.0, 500.0, clock_floor_mhz=1980)
    free = PlannedInstance("b", "SS", "n1", [2, 3], 2, 1200, 1.0, 500.0)
    plan = Plan(1, 0.0, "m", [held, free], {"SS": 2.0}, 1000.0, 1800.0, revision=PLAN_REVISION)
    wire = json.loads(plan.to_json())
    assert [("clock_floor_mhz" in i) for i in wire["instances"]] == [True, False]  # plans without floors as before
    back = Plan.from_json(plan.to_json())
    assert back == plan and back.instances[0].clock_target_mhz == 1980 and back.instances[1].clock_target_mhz == 1200
    wire["instances"][0]["clock_floor_mhz"] = "top"
    with pytest.raises(ContractError, match="clock_floor_mhz"):
        Plan.from_json(wire)


def test_observation_revision_2_keeps_text_slots_and_revision_1_messages_still_read() -> None:
    slots = [0, 7, 513, 65535]
    obs = Observation(
        "r", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, None, None, 200, "i1", "m", 1.0,
        text_slots=encode_slots(slots), text_dim=1 << 16, revision=OBSERVATION_REVISION,
    )  # fmt: skip
    again = Observation.from_json(obs.to_json())
    assert again.slots() == slots and again.revision == OBSERVATION_REVISION
    assert len(again.text_slots) <= 3 * len(slots)  # base64 of uint16: compact on the stream
    # a message written before revision 2 (no text fields) reads as revision 1 with no slots
    old = json.loads(obs.to_json())
    for name in ("text_slots", "text_dim", "revision"):
        del old[name]
    legacy = Observation.from_json(json.dumps(old))
    assert legacy.revision == 1 and legacy.slots() == []
    # and a reader of revision 1 (dropping fields it does not know) reads a revision-2 message
    assert {f for f in json.loads(obs.to_json())} - set(old) == {"text_slots", "text_dim", "revision"}


@pytest.mark.parametrize(
    ("text", "dim", "message"),
    [("***", 65536, "base64"), ("AA==", 65536, "odd"), (encode_slots([9]), 8, "outside"), ("AAA=", 0, "outside")],
)
def test_malformed_text_slots_are_refused(text: str, dim: int, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        decode_slots(text, dim)
    with pytest.raises(ContractError):
        Observation.from_json(
            {**Observation("r", "SS", "SS", [1, 0, 0], 1, 1, None, None, 200, "i", "m", 1.0).to_dict(), "text_dim": "x"}
        )
