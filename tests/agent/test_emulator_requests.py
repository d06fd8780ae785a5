"""Request parsing of the simulated engine: lengths, hints, request type, and refusals (pure, no I/O)."""

from __future__ import annotations

import json

import pytest

from wattgate.agent.engines.emulator_requests import ChunkWriter, SimRequestError, parse_request
from wattgate.profiles.classes import ClassEdges


def parse(body: object, endpoint: str = "chat", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, headers or {}, endpoint, model="m", default_output_tokens=64, edges=ClassEdges())


def test_lengths_and_type() -> None:
    r = parse({"model": "m", "messages": [{"role": "user", "content": "x" * 1600}], "max_tokens": 500})
    assert (r.input_tokens, r.output_tokens, r.finish_reason, r.rtype.name) == (404, 500, "length", "SL")
    r = parse({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}]})
    assert (r.input_tokens, r.output_tokens, r.rtype.name) == (5, 64, "SS")
    r = parse({"model": "m", "prompt": ["ab", "cd"], "max_completion_tokens": 7, "max_tokens": 9}, "completions")
    assert (r.input_tokens, r.output_tokens) == (1, 7)
    r = parse({"model": "m", "prompt": list(range(2000))}, "completions")
    assert r.input_tokens == 2000 and r.rtype.input.value == "L"


def test_hints_win_and_max_tokens_caps_them() -> None:
    body = {"model": "m", "prompt": "x", "wattgate_sim": {"output_tokens": 400, "input_tokens": 900}}
    r = parse(body, "completions")
    assert (r.input_tokens, r.output_tokens, r.finish_reason, r.rtype.name) == (900, 400, "stop", "ML")
    r = parse({**body, "max_tokens": 50}, "completions")
    assert (r.output_tokens, r.finish_reason) == (50, "length")
    r = parse({"model": "m", "prompt": "x"}, "completions", {"x-wattgate-output-tokens": "12"})
    assert (r.output_tokens, r.finish_reason) == (12, "stop")


@pytest.mark.parametrize(
    ("body", "endpoint", "status", "needle"),
    [
        (b"[1, 2]", "chat", 400, "JSON object"),
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, "chat", 404, "does not exist"),
        ({"model": "m", "messages": "hi"}, "chat", 400, "messages"),
        ({"model": "m", "prompt": 5}, "completions", 400, "prompt"),
        ({"model": "m", "prompt": "x", "n": 2}, "completions", 400, "n = 1"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "completions", 400, "max_tokens"),
        ({"model": "m", "prompt": "x", "wattgate_sim": {"output_tokens": -1}}, "completions", 400, "output_tokens"),
        ({"model": "m", "prompt": "x", "wattgate_sim": 3}, "completions", 400, "wattgate_sim"),
    ],
)
def test_refusals_carry_openai_error_fields(body: object, endpoint: str, status: int, needle: str) -> None:
    with pytest.raises(SimRequestError) as info:
        parse(body, endpoint)
    err = info.value
    assert err.status == status and needle in err.message
    doc = err.body()["error"]
    assert set(doc) == {"message", "type", "param", "code"}


def test_stream_events_with_usage() -> None:
    r = parse({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
               "stream_options": {"include_usage": True}, "max_tokens": 2})  # fmt: skip
    w = ChunkWriter("id1", r)
    first = json.loads(w.token(0)[6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "lorem "} and first["usage"] is None
    tail = w.finish(2, {"timing": "modelled"}).decode().split("\n\n")
    assert json.loads(tail[0][6:])["choices"][0]["finish_reason"] == "length"
    assert json.loads(tail[1][6:])["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert tail[2] == "data: [DONE]"
