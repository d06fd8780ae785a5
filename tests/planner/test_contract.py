from __future__ import annotations

import json

import pytest
import redis

from wattgate.planner.contract import (
    SCHEMA_VERSION,
    ContractError,
    Heartbeat,
    InstanceRecord,
    Keys,
    Observation,
    Plan,
    PlannedInstance,
    UnmanagedInstance,
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


def test_heartbeat_unmanaged_servers_round_trip_and_old_heartbeats_still_read() -> None:
    beat = Heartbeat("ext", 1.0, 3, 8, True, managed=False, unmanaged=[UnmanagedInstance("e0", 4, [0, 1, 2, 3], "m")])
    back = Heartbeat.from_json(beat.to_json())
    assert back == beat and back.unmanaged[0].engine == "vllm" and back.unmanaged[0].pool == ""
    old = beat.to_dict()
    del old["unmanaged"], old["managed"]
    assert Heartbeat.from_json(json.dumps(old)).unmanaged == []
    with pytest.raises(ContractError, match="unmanaged"):
        Heartbeat.from_json(beat.to_dict() | {"unmanaged": "e0"})
    with pytest.raises(ContractError, match="bad unmanaged instance"):
        Heartbeat.from_json(beat.to_dict() | {"unmanaged": [{"id": "e0"}]})


def test_plan_fixed_ids_default_empty_and_newer_fields_are_ignored() -> None:
    inst = PlannedInstance("e0", "SM", "ext", [0, 1], 2, 1200, 1.0, 500.0)
    plan = Plan(1, 0.0, "m", [inst], {"SM": 1.0}, 500.0, 900.0, fixed=["e0"])
    back = Plan.from_json(plan.to_json())
    assert back.fixed == ["e0"] and back.fixed_pools() == {"e0": "SM"}
    old = plan.to_dict()
    del old["fixed"]
    assert Plan.from_json(json.dumps(old)).fixed == [] and Plan.from_json(json.dumps(old)).fixed_pools() == {}
    # a newer writer's extra fields, on the plan and on its instances, are ignored rather than refused
    newer = plan.to_dict() | {"later": 1}
    newer["instances"] = [{**newer["instances"][0], "later": True}]
    assert Plan.from_json(json.dumps(newer)) == plan
    with pytest.raises(ContractError, match="bad instance"):
        Plan.from_json(plan.to_dict() | {"instances": [{"id": "e0"}]})
