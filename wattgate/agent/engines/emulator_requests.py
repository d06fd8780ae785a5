"""Parsing and shaping of OpenAI requests and responses for the emulated engine (no I/O here).

Per-request hints (simulation only; a real engine ignores them): a body field
``"wattgate_sim": {"output_tokens": N, "input_tokens": M}`` or the headers
``x-wattgate-output-tokens`` / ``x-wattgate-input-tokens``. The output length is the hint (capped by
``max_tokens``; finish reason ``stop``), else ``max_completion_tokens``/``max_tokens`` (finish
reason ``length``), else the server's default. Input tokens are the hint, else ``ceil(chars / 4)``
of the prompt text plus 4 per chat message.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wattgate.profiles.classes import ClassEdges, RequestType

FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
MAX_HINT_TOKENS = 1_000_000


class SimRequestError(Exception):
    """A request the simulated engine refuses: carries the OpenAI error fields."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "NotFoundError" if self.status == 404 else "BadRequestError"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code or self.status}}


@dataclass(frozen=True)
class ParsedRequest:
    endpoint: str  # "chat" or "completions"
    model: str
    stream: bool
    include_usage: bool
    input_tokens: int
    output_tokens: int
    finish_reason: str
    rtype: RequestType


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HINT_TOKENS:
        raise SimRequestError(f"{name} must be an integer in 1..{MAX_HINT_TOKENS}, got {value!r}", param=name)
    return value


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return _positive_int(int(raw), name)
    except ValueError:
        raise SimRequestError(f"header {name} must be an integer, got {raw!r}", param=name) from None


def _prompt_chars(body: Mapping[str, Any], endpoint: str) -> int:
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return len(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return sum(len(p) for p in prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return 4 * len(prompt)  # token ids
        raise SimRequestError(
            "'prompt' must be a non-empty string, list of strings or list of token ids", param="prompt"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, Mapping) for m in messages):
        raise SimRequestError("'messages' must be a non-empty list of message objects", param="messages")
    total = 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, Mapping))
        total += 16  # about 4 tokens of role and template per message
    return total


def parse_request(
    raw: bytes, headers: Mapping[str, str], endpoint: str, *, model: str, default_output_tokens: int, edges: ClassEdges
) -> ParsedRequest:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise SimRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SimRequestError("request body must be a JSON object")
    if body.get("model") != model:
        raise SimRequestError(f"The model `{body.get('model')}` does not exist.", status=404, param="model")
    if body.get("n") not in (None, 1):
        raise SimRequestError("only n = 1 is supported", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise SimRequestError("'stream' must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, Mapping) and opts.get("include_usage"))
    hint = body.get("wattgate_sim") or {}
    if not isinstance(hint, Mapping):
        raise SimRequestError("'wattgate_sim' must be an object", param="wattgate_sim")
    cap = _positive_int(body.get("max_completion_tokens"), "max_completion_tokens") or _positive_int(
        body.get("max_tokens"), "max_tokens"
    )
    wanted = _positive_int(hint.get("output_tokens"), "wattgate_sim.output_tokens") or _header_int(
        headers, "x-wattgate-output-tokens"
    )
    chars = _prompt_chars(body, endpoint)
    input_tokens = (
        _positive_int(hint.get("input_tokens"), "wattgate_sim.input_tokens")
        or _header_int(headers, "x-wattgate-input-tokens")
        or max(1, math.ceil(chars / 4))
    )
    if wanted is not None and (cap is None or wanted <= cap):
        output_tokens, finish = wanted, "stop"
    elif cap is not None:
        output_tokens, finish = cap, "length"
    else:
        output_tokens, finish = default_output_tokens, "length"
    return ParsedRequest(
        endpoint,
        model,
        stream,
        include_usage,
        input_tokens,
        output_tokens,
        finish,
        edges.request_type(input_tokens, output_tokens),
    )


def token_text(i: int) -> str:
    return FILLER[i % len(FILLER)] + " "


class ChunkWriter:
    """Builds the SSE events of one streamed response (chat.completion.chunk or text_completion)."""

    def __init__(self, request_id: str, req: ParsedRequest) -> None:
        self.req = req
        self.created = int(time.time())
        chat = req.endpoint == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = {"id": request_id, "object": obj, "created": self.created, "model": req.model}
        self._tokens: dict[int, bytes] = {}  # the filler repeats: each distinct event is encoded once

    def _event(self, choice: dict[str, Any] | None, **extra: Any) -> bytes:
        doc: dict[str, Any] = {**self._head, "choices": [] if choice is None else [choice], **extra}
        if self.req.include_usage and "usage" not in doc:
            doc["usage"] = None
        return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

    def _choice(self, text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.req.endpoint == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def token(self, i: int) -> bytes:
        if i == 0:
            return self._event(self._choice(token_text(0), None, role=True))
        key = i % len(FILLER)
        event = self._tokens.get(key)
        if event is None:
            event = self._tokens[key] = self._event(self._choice(token_text(i), None))
        return event

    def finish(self, emitted: int, sim: dict[str, Any]) -> bytes:
        out = self._event(self._choice("", self.req.finish_reason if emitted else "abort"), wattgate_sim=sim)
        if self.req.include_usage:
            out += self._event(None, usage=usage(self.req.input_tokens, emitted))
        return out + b"data: [DONE]\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def full_response(request_id: str, req: ParsedRequest, emitted: int, sim: dict[str, Any]) -> dict[str, Any]:
    text = "".join(token_text(i) for i in range(emitted))
    if req.endpoint == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": req.finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason}
        obj = "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": req.model,
        "choices": [choice],
        "usage": usage(req.input_tokens, emitted),
        "wattgate_sim": sim,
    }
