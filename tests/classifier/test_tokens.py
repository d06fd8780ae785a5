from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wattgate.classifier import tokens


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("meta-llama/Llama-3.1-8B-Instruct", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),
        (None, "cl100k_base"),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str) -> None:
    assert tokens.encoding_for_model(model) == encoding


def test_counts_match_tiktoken_from_litellm_files() -> None:
    text = "Tokenizers split text into pieces: naïve café, 12345 and ```code```."
    counter = tokens.counter("cl100k_base")
    assert counter.exact
    folder = tokens.tokenizer_dir()
    assert folder is not None
    assert (folder / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").is_file()
    assert counter.count(text) == len(counter.encode(text)) > 10
    assert tokens.count_tokens("hello world") == 2
    assert counter.encode("hello world") == [15339, 1917]  # cl100k_base ids
    assert tokens.count_tokens("hello world", "gpt-4o") == 2


def test_no_litellm_import_and_no_network() -> None:
    code = (
        "import socket, sys\n"
        "def no(*a, **k): raise SystemExit('network used')\n"
        "socket.socket.connect = no\n"
        "from wattgate.classifier.tokens import count_tokens\n"
        "assert count_tokens('hello world', 'gpt-4o') == 2\n"
        "assert count_tokens('hello world') == 2\n"
        "assert 'litellm' not in sys.modules\n"
    )
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TIKTOKEN_CACHE_DIR": "/nonexistent"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_missing_files_fall_back_to_an_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tokens, "tokenizer_dir", lambda: tmp_path)
    counter = tokens._load("cl100k_base")
    assert not counter.exact
    assert counter.count("x" * 400) == 100


def test_altered_file_is_not_trusted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").write_text("IQ== 0\n")
    monkeypatch.setattr(tokens, "tokenizer_dir", lambda: tmp_path)
    assert not tokens._load("cl100k_base").exact
