"""``usage.energy`` in a response: spliced into a JSON body's usage object, or into a stream's usage event."""

from __future__ import annotations

import json
from typing import Any

_DECODER = json.JSONDecoder()


def with_energy(body: bytes, energy: dict[str, Any]) -> bytes:
    """``body`` with ``"energy": energy`` added to its last top-level-looking ``usage`` object (the client's
    other bytes are kept as they are); the body unchanged when it has no usage object."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return body
    try:
        text = body[at + 7 :].decode()
        colon = text.index(":")
        start = colon + 1 + len(text[colon + 1 :]) - len(text[colon + 1 :].lstrip())
        usage, stop = _DECODER.raw_decode(text, start)
    except (ValueError, UnicodeDecodeError):
        return body
    if not isinstance(usage, dict):
        return body
    usage["energy"] = energy
    head = at + 7 + len(text[:start].encode())
    tail = at + 7 + len(text[:stop].encode())
    return body[:head] + json.dumps(usage, separators=(",", ":")).encode() + body[tail:]


def event_with_energy(line: bytes, doc: dict[str, Any], energy: dict[str, Any]) -> bytes:
    """A stream's usage event line (``data: {...}``) with ``usage.energy`` added."""
    doc["usage"] = {**doc["usage"], "energy": energy}
    return line[: line.index(b":") + 1] + b" " + json.dumps(doc, separators=(",", ":")).encode()
