"""The energy wire format: instance energy counters (agents) and attributed-energy minutes (gateways)."""

from __future__ import annotations

import json

import pytest
import redis

from wattgate.planner.contract import (
    OBSERVATION_REVISION,
    ContractError,
    InstanceEnergy,
    Keys,
    Observation,
    energy_field,
    parse_energy_field,
)


def test_instance_energy_round_trips_through_a_real_redis_with_its_source(redis_url: str) -> None:
    keys = Keys("t")
    assert keys.energy == "t:v1:energy" and keys.energy_minute(29_000_000) == "t:v1:energy:m:29000000"
    assert keys.energy_work("i1", 5) == "t:v1:energy:w:i1:5" and keys.energy_marks("i1") == "t:v1:energy:mark:i1"
    assert keys.energy_idle("i1", 5) == "t:v1:energy:idle:i1:5"
    msg = InstanceEnergy("node1-e0", "node1", 1765080000.25, 812345.5, 1604.2, "measured", [0, 1, 2, 3])
    doc = json.loads(msg.to_json())
    assert doc == {
        "schema": 1, "instance": "node1-e0", "node": "node1", "ts": 1765080000.25, "energy_j": 812345.5,
        "power_w": 1604.2, "source": "measured", "gpus": [0, 1, 2, 3],
    }  # fmt: skip
    r = redis.Redis.from_url(redis_url)
    try:
        r.hset(keys.energy, msg.instance, msg.to_json())
        assert InstanceEnergy.from_json(r.hget(keys.energy, "node1-e0") or b"") == msg
    finally:
        r.close()


def test_instance_energy_ignores_unknown_fields_and_defaults_gpus() -> None:
    doc = {"schema": 1, "instance": "a", "node": "n", "ts": 1.0, "energy_j": 2.0, "power_w": 0, "source": "modelled"}
    assert InstanceEnergy.from_json({**doc, "newer_field": 7}).gpus == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "guessed"}, "unknown source"),
        ({"energy_j": -1.0}, "energy_j must be a number"),
        ({"ts": "now"}, "ts must be a number"),
        ({"power_w": True}, "power_w must be a number"),
        ({"schema": 2}, "schema version"),
    ],
)
def test_malformed_instance_energy_is_refused(change: dict[str, object], message: str) -> None:
    doc = {"schema": 1, "instance": "a", "node": "n", "ts": 1.0, "energy_j": 2.0, "power_w": 3.0, "source": "modelled"}
    with pytest.raises(ContractError, match=message):
        InstanceEnergy.from_json({**doc, **change})
    with pytest.raises(ContractError):
        InstanceEnergy.from_json(b"{not json")


def test_energy_fields_round_trip_any_model_name() -> None:
    raw = energy_field("joules", "org/llama:70b|x", "key-1a2b", "SS", "200", "modelled")
    assert parse_energy_field(raw.encode()) == ("joules", "org/llama:70b|x", "key-1a2b", "SS", "200", "modelled")
    with pytest.raises(ContractError):
        energy_field("watts", "m", "k", "p", "200", "modelled")
    for bad in ("[1,2]", '["watts","m","k","p","s","x"]', "nope", '["joules","m","k","p","s",1]'):
        with pytest.raises(ContractError):
            parse_energy_field(bad)


def test_observation_revision_3_carries_energy_and_older_messages_read_without_it() -> None:
    obs = Observation(
        "r", "SS", "SS", [1.0, 0.0, 0.0], 10, 5, None, None, 200, "i1", "m", 1.0,
        revision=OBSERVATION_REVISION, energy_j=12.5, energy_source="modelled",
    )  # fmt: skip
    again = Observation.from_json(obs.to_json())
    assert (again.energy_j, again.energy_source, again.revision) == (12.5, "modelled", 3)
    old = json.loads(obs.to_json())
    del old["energy_j"], old["energy_source"]
    assert Observation.from_json(old).energy_j is None
