from __future__ import annotations

import math

import pytest

from wattgate.classifier.features import (
    DEFAULT_SAMPLE_CHARS,
    FEATURE_NAMES,
    NGRAM_HEAD_TOKENS,
    SAMPLE_CALIBRATION,
    FeatureExtractor,
    _extrapolate,
    feature_vector,
)
from wattgate.classifier.tokens import count_tokens, counter

PROSE = "The quick brown fox jumps over the lazy dog while the committee reviews the annual budget. "


def test_chat_features_reflect_the_request() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "word " * 500},
            {"role": "user", "content": [{"type": "text", "text": "Write a detailed essay about rivers?"}]},
        ],
        "max_completion_tokens": 800,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
        "stop": ["\n\n", "END"],
        "temperature": 0.2,
    }
    ext = FeatureExtractor().extract(body, "chat")
    f = ext.features
    assert set(f) == set(FEATURE_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    assert f["endpoint_chat"] == 1.0
    assert f["n_messages"] == 4.0 and f["n_assistant_turns"] == 1.0
    assert f["log_last_assistant_tokens"] == pytest.approx(math.log1p(500), rel=0.01)
    assert f["log_system_tokens"] == pytest.approx(math.log1p(count_tokens("You are terse.")))
    assert f["has_tools"] == 1.0 and f["n_tools"] == 1.0
    assert f["response_format_json"] == 1.0 and f["n_stop"] == 2.0
    assert f["log_max_tokens"] == pytest.approx(math.log1p(800))
    assert f["temperature"] == 0.2
    assert f["cue_write"] == f["cue_long"] == f["cue_detail"] == f["ends_with_question"] == 1.0
    assert f["cue_short"] == 0.0
    texts = ["You are terse.", "Hi", "word " * 500, "Write a detailed essay about rivers?"]
    exact = sum(count_tokens(t, "gpt-4o") for t in texts) + 4 * 4 + 3
    assert ext.exact_count is False  # over the exact-count budget: sampled
    assert ext.input_tokens == pytest.approx(exact, rel=0.05)


def test_short_chat_is_counted_exactly_and_gives_token_ids() -> None:
    body = {"messages": [{"role": "user", "content": "What is 2+2? Answer in one word."}]}
    ext = FeatureExtractor().extract(body, "chat")
    assert ext.exact_count
    assert ext.input_tokens == count_tokens("What is 2+2? Answer in one word.") + 4 + 3
    assert list(ext.ngram_ids) == counter("cl100k_base").encode("What is 2+2? Answer in one word.")
    assert ext.features["cue_short"] == 1.0 and ext.features["cue_question"] == 1.0


def test_completions_prompt_and_long_text_sampling() -> None:
    prompt = PROSE * 200  # ~3,600 tokens
    ext = FeatureExtractor().extract({"prompt": prompt}, "completions")
    assert ext.features["endpoint_chat"] == 0.0
    assert not ext.exact_count
    assert ext.input_tokens == pytest.approx(count_tokens(prompt), rel=0.03)
    exact = FeatureExtractor(sample_chars=10**9).extract({"prompt": prompt}, "completions")
    assert exact.exact_count and exact.input_tokens == count_tokens(prompt)


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": []}, {"messages": ["junk", {"role": "user"}]}, {"prompt": 5}, {"prompt": ["a", 3, "b"]}],
)
def test_odd_bodies_do_not_crash(body: dict[str, object]) -> None:
    for endpoint in ("chat", "completions"):
        ext = FeatureExtractor().extract(body, endpoint)
        assert ext.input_tokens >= 1


def test_feature_vector_orders_and_fills_missing() -> None:
    assert feature_vector({"b": 2.0}, ["a", "b"]) == [0.0, 2.0]


def test_sampled_counts_are_scaled_and_calibrated() -> None:
    """A head of 100 tokens in 400 of 4,000 chars: 10x, less the cut's half token, times the calibration."""
    assert _extrapolate(100, 400, 4000) == round(99.5 * 10 * SAMPLE_CALIBRATION)
    assert _extrapolate(1, 64, 65) >= 1
    long_prompt = "word " * 2000  # far over the budget: counted from its head
    ext = FeatureExtractor().extract({"prompt": long_prompt}, "completions")
    assert not ext.exact_count
    assert ext.input_tokens == pytest.approx(count_tokens(long_prompt), rel=0.02)
    assert len(ext.ngram_ids) == min(
        NGRAM_HEAD_TOKENS, len(counter("cl100k_base").encode(long_prompt[:DEFAULT_SAMPLE_CHARS]))
    )


def _feats(content: str, **body: object) -> dict[str, float]:
    return FeatureExtractor().extract({"messages": [{"role": "user", "content": content}], **body}, "chat").features


@pytest.mark.parametrize(
    ("text", "tokens", "upper", "items"),
    [
        ("Explain it in 3 sentences.", 66, 0, 0),
        ("Write a 500-word blog post about tea.", 650, 0, 0),
        ("Summarize this in no more than 50 words: ...", 65, 1, 0),
        ("Answer in under 100 words please", 130, 1, 0),
        ("List 10 ideas for a birthday party", 300, 0, 10),
        ("give me five examples of irony", 150, 0, 5),
        ("Write two paragraphs on bees", 180, 0, 0),
        ("Describe it in a single sentence", 22, 0, 0),
        ("Write a story about a dragon", 0, 0, 0),  # "write a" alone asks for no length
        ("What is 2 + 2?", 0, 0, 0),
    ],
)
def test_explicit_length_instructions(text: str, tokens: float, upper: float, items: float) -> None:
    f = _feats(text)
    assert f["log_req_tokens"] == pytest.approx(math.log1p(tokens), abs=0.02)
    assert (f["req_upper_bound"], f["req_items"]) == (upper, items)


def test_reasoning_thinking_tools_and_schema_flags() -> None:
    assert _feats("hi")["reasoning_level"] == 0.0
    assert _feats("hi", reasoning_effort="high")["reasoning_level"] == 3.0
    assert _feats("hi", reasoning={"effort": "low"})["reasoning_level"] == 1.0
    thinking = _feats("hi", thinking={"type": "enabled", "budget_tokens": 4000})
    assert thinking["reasoning_level"] == 2.0 and thinking["log_thinking_budget"] == pytest.approx(math.log1p(4000))
    assert _feats("hi", chat_template_kwargs={"enable_thinking": True})["reasoning_level"] == 2.0
    assert _feats("hi", tool_choice="required")["tool_choice_required"] == 1.0
    assert _feats("hi", tool_choice={"type": "function", "function": {"name": "f"}})["tool_choice_required"] == 1.0
    assert _feats("hi", tool_choice="auto")["tool_choice_required"] == 0.0
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert _feats("hi", response_format=schema)["response_format_schema"] == 1.0
    tool_turn = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": []},
            {"role": "tool", "content": '{"t": 21}'},
        ]
    }
    assert FeatureExtractor().extract(tool_turn, "chat").features["last_is_tool_result"] == 1.0


def test_code_and_non_ascii_ratios() -> None:
    code = _feats("def f(x):\n    return {x: [x_1 for x_1 in range(x)]};")
    prose = _feats(PROSE)
    assert code["code_char_ratio"] > 0.15 > prose["code_char_ratio"] == 0.0
    assert _feats("Объясни, пожалуйста")["non_ascii_ratio"] > 0.8 and prose["non_ascii_ratio"] == 0.0
