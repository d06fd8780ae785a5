from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wattgate.classifier.adapt import AdaptSettings, adapt
from wattgate.classifier.errors import ModelFormatError
from wattgate.classifier.features import Sample
from wattgate.classifier.model import ClassifierModel, encode_array, load_model, parse_model, sign
from wattgate.classifier.predictor import MODEL_FILE, data_path, load_shipped_model
from wattgate.classifier.train import with_served
from wattgate.profiles.classes import ClassEdges


def test_exported_trees_score_like_sklearn(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    model, head, x = tiny
    ours = model.probabilities_batch(x[:200])
    np.testing.assert_allclose(ours, head.predict_proba(x[:200]), atol=1e-9)


def test_round_trip_through_json(tiny: tuple[ClassifierModel, Any, np.ndarray], tmp_path: Path) -> None:
    model, _, x = tiny
    path = tmp_path / "m.json"
    path.write_text(model.to_json())
    again = load_model(path)
    assert again.version == 3
    np.testing.assert_array_equal(again.probabilities(x[0]), model.probabilities(x[0]))


def test_tampered_file_is_refused(tiny: tuple[ClassifierModel, Any, np.ndarray], tmp_path: Path) -> None:
    doc = json.loads(tiny[0].to_json())
    doc["head"]["baseline"][0] += 1.0  # a changed parameter, checksum left as it was
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        load_model(path)


def test_valid_checksum_cannot_smuggle_an_out_of_range_index(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    doc = json.loads(tiny[0].to_json())
    head = doc["head"]
    size = head["n_trees"] * head["n_nodes"]
    head["left"] = encode_array(np.full(size, size + 5), "<i4")
    with pytest.raises(ModelFormatError, match="out of its tree"):
        parse_model(sign(doc))
    doc = json.loads(tiny[0].to_json())
    doc["head"]["feature"] = encode_array(np.full(size, 99), "<i4")
    with pytest.raises(ModelFormatError, match="feature index out of range"):
        parse_model(sign(doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 5}, "format version"),
        ({"format_version": 1}, "unexpected fields"),  # a format-1 document has no length or served sections
        ({"format": "pickle"}, "not a wattgate classifier model"),
        ({"extra": 1}, "unexpected fields"),
    ],
)
def test_schema_is_strict(tiny: tuple[ClassifierModel, Any, np.ndarray], change: dict[str, Any], message: str) -> None:
    doc = {**json.loads(tiny[0].to_json()), **change}
    with pytest.raises(ModelFormatError, match=message):
        parse_model(sign(doc))


def test_non_json_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(bad)
    with pytest.raises(ModelFormatError, match="cannot read model file"):
        load_model(tmp_path / "absent.json")


def test_shipped_model_is_small_versioned_and_valid() -> None:
    path = data_path(MODEL_FILE)
    assert path.stat().st_size < 3_000_000
    model = load_shipped_model()
    assert model.version >= 1
    assert (model.output_short_max, model.output_medium_max) == (94, 371)


def _profile_doc(model: ClassifierModel) -> dict[str, Any]:
    samples = [
        Sample({n: float(i % 7) for n in model.feature_names}, 20 if i % 2 else 600, float(i), "srv", [i % 50, 60])
        for i in range(200)
    ]
    result = adapt(model, samples, ClassEdges(), settings=AdaptSettings(min_gain=-1.0))
    assert result.candidate is not None, result.reason
    return json.loads(result.candidate.to_json())


def test_served_profiles_round_trip_and_are_validated(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    doc = _profile_doc(tiny[0])
    again = parse_model(json.dumps(doc))
    profile = again.served["srv"]
    assert profile.text_delta is not None and profile.observations == 200
    assert set(doc) >= {"length", "served"} and doc["format_version"] == 4
    assert profile.head is None  # no training rows for these features: nothing to transfer
    assert len(doc["served"]["srv"]["decision"]) == 3
    bad = json.loads(json.dumps(doc))
    bad["served"]["srv"]["features"]["names"][0] = "no_such_feature"
    with pytest.raises(ModelFormatError, match="unknown feature names"):
        parse_model(sign(bad))
    bad = json.loads(json.dumps(doc))
    bad["served"]["srv"]["features"]["scale"][0] = 0.0
    with pytest.raises(ModelFormatError, match="scale must be positive"):
        parse_model(sign(bad))
    bad = json.loads(json.dumps(doc))
    bad["served"]["srv"]["length"]["quantiles"][0] = [5.0, 1.0]
    with pytest.raises(ModelFormatError, match="ascending"):
        parse_model(sign(bad))
    bad = json.loads(json.dumps(doc))
    bad["served"]["srv"]["bias"] = [0.0, 1.0]
    with pytest.raises(ModelFormatError, match="bias"):
        parse_model(sign(bad))
    bad = json.loads(json.dumps(doc))
    bad["served"]["srv"]["decision"] = [0.0, 0.0, 50.0]
    with pytest.raises(ModelFormatError, match="decision"):
        parse_model(sign(bad))
    bad = json.loads(json.dumps(doc))
    del bad["served"]["srv"]["decision"]  # a format-3 profile must say its decision rule
    with pytest.raises(ModelFormatError, match="fields must be"):
        parse_model(sign(bad))
    tampered = json.loads(json.dumps(doc))
    tampered["served"]["srv"]["bias"] = [9.0, 0.0, 0.0]
    with pytest.raises(ModelFormatError, match="checksum"):
        parse_model(json.dumps(tampered))


def test_format_1_documents_still_load_with_midpoint_lengths(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    """A gateway of this version can read a model an older retrain published in Redis."""
    doc = json.loads(tiny[0].to_json())
    del doc["length"], doc["served"]
    doc["format_version"] = 1
    old = parse_model(sign(doc))
    assert old.served == {} and old.length.means == (47.0, 232.5, 742.0)
    renewed = with_served(old, {}, old.version + 1, {})
    assert renewed.doc["format_version"] == 4 and renewed.length == old.length


def test_format_2_profiles_load_with_the_plain_argmax(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    """A gateway of this version reads a format-2 document an older retrain published: its profiles have no
    decision weights (the plain argmax), and the next retrain writes them back in the current format."""
    doc = _profile_doc(tiny[0])
    doc["format_version"] = 2
    del doc["served"]["srv"]["head"]  # format 4
    doc["served"]["srv"]["decision"] = [0.0, 2.0, 0.0]
    with pytest.raises(ModelFormatError, match="fields must be"):  # a format-2 profile has no decision field
        parse_model(sign(doc))
    del doc["served"]["srv"]["decision"]
    old = parse_model(sign(doc))
    assert old.served["srv"].decision == (0.0, 0.0, 0.0)
    again = with_served(old, {}, old.version + 1, {})
    assert again.doc["format_version"] == 4 and again.doc["served"]["srv"]["decision"] == [0.0, 0.0, 0.0]
    assert again.served["srv"].bias == old.served["srv"].bias


def test_a_profiles_own_trees_round_trip_and_are_validated(tiny: tuple[ClassifierModel, Any, np.ndarray]) -> None:
    """Format 4: a profile may carry its own trees (transferred); they load as the shipped head does, checked
    the same way, and a format-3 profile (no trees) loads with the shipped ones."""
    model, _, x = tiny
    doc = _profile_doc(model)
    profile = parse_model(json.dumps(doc)).served["srv"]
    flipped = replace(model.trees, value=-model.trees.value)  # trees of its own, unlike the shipped ones
    with_head = with_served(model, {"srv": replace(profile, head=flipped)}, model.version + 2, {})
    again = parse_model(with_head.to_json()).served["srv"]
    assert again.head is not None
    np.testing.assert_array_equal(again.head.raw_batch(x[:50]), flipped.raw_batch(x[:50]))
    assert again.head.raw3(x[0].tolist()) != model.raw3(x[0].tolist())
    bad = json.loads(with_head.to_json())
    size = bad["head"]["n_trees"] * bad["head"]["n_nodes"]
    bad["served"]["srv"]["head"]["feature"] = encode_array(np.full(size, 99), "<i4")
    with pytest.raises(ModelFormatError, match=r"served\['srv'\].head.feature index out of range"):
        parse_model(sign(bad))
    old = json.loads(with_head.to_json())
    old["format_version"] = 3
    with pytest.raises(ModelFormatError, match="fields must be"):  # a format-3 profile has no head field
        parse_model(sign(old))
    del old["served"]["srv"]["head"]
    assert parse_model(sign(old)).served["srv"].head is None
