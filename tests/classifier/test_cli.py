from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.classifier.shifted import shifted_requests, topic_requests
from wattgate.cli import main


def _write(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i, (body, tokens) in enumerate(shifted_requests(n, seed=3)):
            row = {"messages": body["messages"]} if i % 3 else {"prompt": body["messages"][0]["content"]}
            f.write(json.dumps({**row, "output_tokens": tokens}) + "\n")
    return path


def test_eval_prints_the_model_and_both_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classifier", "eval", "--data", str(_write(tmp_path / "d.jsonl", 60))]) == 0
    out = capsys.readouterr().out
    for word in ("model:", "majority class:", "input length only:", "balanced accuracy", "macro-F1", "true L"):
        assert word in out


@pytest.mark.timeout(600)  # retrain fits trees on the training rows (transfer)
def test_eval_json_with_adaptation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", 300)
    assert main(["classifier", "eval", "--data", str(data), "--json", "--adapt-fraction", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_eval"] == 150 and report["source"] == "measured"
    before = report["results"]["model, zero-shot"]
    after = report["results"]["model, adapted"]
    adaptation = report["adaptation"]
    # the path a deployment takes: observations in Redis, retrain, a published version the watcher loads
    assert adaptation["accepted"] and adaptation["published"] == 2 and adaptation["observations"] == 150
    assert after["accuracy"] > before["accuracy"] + 0.3
    assert sum(map(sum, after["confusion"])) == 150
    assert set(report["results"]) >= {"majority class", "input length only"}
    tokens = report["expected_tokens"]
    assert abs(tokens["model, adapted"]["sum_bias"]) < abs(tokens["model, zero-shot"]["sum_bias"])
    assert tokens["model, adapted"]["mae_tokens"] < tokens["model, zero-shot"]["mae_tokens"]


@pytest.mark.timeout(600)
def test_eval_without_text_slots_learns_less(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--no-text-slots`` measures a deployment whose gateways keep no slots (classifier_text_slots: false)."""
    path = tmp_path / "topics.jsonl"
    with path.open("w") as f:
        for body, tokens in topic_requests(400, seed=4):
            f.write(json.dumps({**body, "output_tokens": tokens}) + "\n")
    scores = {}
    for flag in ([], ["--no-text-slots"]):
        assert main(["classifier", "eval", "--data", str(path), "--json", "--adapt-fraction", "0.5", *flag]) == 0
        report = json.loads(capsys.readouterr().out)
        scores[bool(flag)] = report["results"]["model, adapted"]["log_loss"]
        assert report["adaptation"]["models"][0]["text_slots"] is not bool(flag)
    assert scores[False] < scores[True] / 2


@pytest.mark.parametrize(
    ("content", "message"),
    [("{bad\n", "not valid JSON"), ('{"prompt": "x"}\n', "output_tokens"), ('{"output_tokens": 3}\n', "messages")],
)
def test_eval_bad_data_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    assert main(["classifier", "eval", "--data", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_eval_missing_file_and_bad_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classifier", "eval", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["classifier", "eval", "--data", "x", "--adapt-fraction", "1.5"]) == 2
