"""Server-sent-event pass-through: forward complete events as they arrive, read usage, drop the usage chunk on request.

The usage event is the last before ``[DONE]``: when it goes to the client, ``on_usage`` (the energy meter's
estimate) may add an ``energy`` object to its usage.

Only an incomplete trailing event is held back (a client cannot use half an event); everything
complete in a chunk goes out at once, so nothing is coalesced across upstream reads.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from wattgate.gateway.energy_usage import event_with_energy

_SPLIT = re.compile(rb"(\r?\n\r?\n)")


def _last_boundary(data: bytes) -> int:
    """Index just past the last blank line (event end) in ``data``, or 0."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class SseRelay:
    """Feed upstream chunks in, get bytes to send out; counts events and times them for TBT."""

    __slots__ = ("events", "first_event_at", "last_event_at", "on_usage", "strip_usage", "tail", "usage")

    def __init__(
        self, strip_usage: bool, on_usage: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    ) -> None:
        self.strip_usage = strip_usage
        self.on_usage = on_usage
        self.tail = b""
        self.usage: dict[str, Any] | None = None
        self.events = 0
        self.first_event_at: float | None = None
        self.last_event_at = 0.0

    def feed(self, chunk: bytes) -> bytes:
        data = self.tail + chunk if self.tail else chunk
        cut = _last_boundary(data)
        if cut < len(data):
            self.tail = data[cut:]
            data = data[:cut]
        else:
            self.tail = b""
        if not data:
            return b""
        if b'"usage"' in data:
            data = self._usage_events(data)
        n = data.count(b"data:") - data.count(b"data: [DONE]")
        if n > 0:
            now = time.perf_counter()
            if self.first_event_at is None:
                self.first_event_at = now
            self.last_event_at = now
            self.events += n
        return data

    def flush(self) -> bytes:
        """What is left when the upstream ends (an event without its blank line)."""
        data, self.tail = self.tail, b""
        return data

    def _usage_events(self, data: bytes) -> bytes:
        """``data`` less the usage-only event when it is to be stripped. Only the events from the first
        one naming usage on are split (by regex, slow on long data); the ones before pass as they are."""
        at = data.find(b'"usage"')
        cut = max(data.rfind(b"\n\n", 0, at), data.rfind(b"\n\r\n", 0, at))
        if cut < 0:
            return self._split_usage(data)
        cut = data.index(b"\n", cut + 1) + 1  # just past the blank line that ends the event before
        return data[:cut] + self._split_usage(data[cut:])

    def _split_usage(self, data: bytes) -> bytes:
        parts = _SPLIT.split(data)
        out: list[bytes] = []
        # parts = [event, sep, event, sep, ..., last]; keep each event with its separator
        for n in range(0, len(parts) - 1, 2):
            event, sep = parts[n], parts[n + 1]
            if b'"usage"' in event:
                kept = self._take_usage(event)
                if kept is None:
                    continue
                event = kept
            out.append(event + sep)
        if len(parts) % 2 == 1 and parts[-1]:
            out.append(parts[-1])
        return b"".join(out)

    def _take_usage(self, event: bytes) -> bytes | None:
        """Record the usage of this event; the event to send (with ``usage.energy`` when ``on_usage`` gives
        one), or None when it is the usage-only chunk to strip."""
        lines = event.split(b"\n")
        for n, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            try:
                doc = json.loads(line[5:])
            except ValueError:
                return event
            if not (isinstance(doc, dict) and isinstance(doc.get("usage"), dict)):
                continue
            self.usage = doc["usage"]
            energy = self.on_usage(doc["usage"]) if self.on_usage is not None else None
            if self.strip_usage and not doc.get("choices"):
                return None
            if energy is not None:
                cr = line.endswith(b"\r")
                lines[n] = event_with_energy(line.rstrip(b"\r"), doc, energy) + (b"\r" if cr else b"")
                return b"\n".join(lines)
            return event
        return event

    def tbt_s(self) -> float | None:
        if self.first_event_at is None or self.events < 2:
            return None
        return (self.last_event_at - self.first_event_at) / (self.events - 1)
