"""``usage.energy`` spliced into a JSON body and into a stream's usage event; everything else left as it was."""

from __future__ import annotations

import json

from wattgate.gateway.energy_usage import with_energy
from wattgate.gateway.sse import SseRelay

ENERGY = {"joules": 12.5, "source": "measured", "estimate": True}


def test_the_usage_object_of_a_body_gains_energy_and_the_rest_of_the_bytes_stay() -> None:
    body = b'{"id": "x", "choices": [{"text": "\\"usage\\": not me"}], "usage": {"prompt_tokens": 3}, "tail": 1}'
    out = with_energy(body, ENERGY)
    doc = json.loads(out)
    assert doc["usage"] == {"prompt_tokens": 3, "energy": ENERGY} and doc["tail"] == 1
    assert out.startswith(b'{"id": "x", "choices": [{"text": "\\"usage\\": not me"}], "usage": ')
    assert with_energy(b'{"id": "x"}', ENERGY) == b'{"id": "x"}'
    assert with_energy(b'{"usage": [1, 2]}', ENERGY) == b'{"usage": [1, 2]}'
    assert with_energy(b'{"usage": {"broken', ENERGY) == b'{"usage": {"broken'


def test_the_stream_usage_event_gains_energy_or_is_dropped_when_the_client_did_not_ask() -> None:
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\r\n\r\n'
    chunk = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n' + usage + b"data: [DONE]\n\n"
    seen: list[dict[str, object]] = []

    def on_usage(u: dict[str, object]) -> dict[str, object]:
        seen.append(u)
        return ENERGY

    out = SseRelay(strip_usage=False, on_usage=on_usage).feed(chunk)
    events = [e for e in out.replace(b"\r\n", b"\n").split(b"\n\n") if e]
    assert json.loads(events[1][5:])["usage"]["energy"] == ENERGY and events[2] == b"data: [DONE]"
    assert out.count(b"\r\n\r\n") == 1  # the event keeps its own line ends
    stripped = SseRelay(strip_usage=True, on_usage=on_usage).feed(chunk)
    assert b"usage" not in stripped and len(seen) == 2  # the estimate is made either way (observation, books)
