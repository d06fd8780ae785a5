"""Small HTTP helpers of the proxy: body reading with a limit, header filtering, API-key checks, validation."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from starlette.types import Receive, Scope

from wattgate.gateway.errors import ApiError, bad_param

# Hop-by-hop headers (RFC 9110 7.6.1) plus what the gateway owns or must never pass on: the client's
# credentials, the length (the body may be rewritten) and compression (the proxy reads SSE bytes).
_DROP_UPSTREAM = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"trailers",
        b"transfer-encoding", b"upgrade", b"host", b"content-length", b"authorization", b"api-key", b"x-api-key",
        b"cookie", b"accept-encoding", b"x-request-id", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    }
)  # fmt: skip
_DROP_DOWNSTREAM = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"trailers",
        b"transfer-encoding", b"upgrade", b"content-length", b"content-encoding", b"server", b"date", b"x-request-id",
        b"set-cookie",
    }
)  # fmt: skip


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", code="request_too_large")


def upstream_headers(scope: Scope, request_id: str, api_key: str | None) -> list[tuple[bytes, bytes]]:
    """The client's headers to pass on (bytes, as the wire wants them), plus ours."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    drop = _DROP_UPSTREAM
    for k, v in headers:
        if k.lower() == b"connection":  # headers the client named in Connection (any of them) are hop-by-hop too
            drop = drop | {h.strip().lower() for h in v.split(b",")}
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    out.append((b"x-request-id", request_id.encode("latin-1")))
    out.append((b"accept-encoding", b"identity"))
    if api_key:
        out.append((b"authorization", b"Bearer " + api_key.encode("latin-1")))
    return out


def downstream_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in upstream if k.lower() not in _DROP_DOWNSTREAM]


def check_api_key(scope: Scope, keys: frozenset[str]) -> None:
    if not keys:
        return
    given = header(scope, b"authorization") or ""
    token = given[7:].strip() if given[:7].lower() == "bearer " else (header(scope, b"api-key") or "")
    if not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")


def _positive_int(doc: dict[str, Any], name: str) -> None:
    value = doc.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise bad_param(name, f"'{name}' must be a positive integer, got {value!r}")


def validate(doc: dict[str, Any], endpoint: str) -> str:
    """Check the fields the gateway relies on (the backend checks the rest); return the model."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param("model", "you must provide a model parameter (a non-empty string)")
    if endpoint == "chat":
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise bad_param("messages", "'messages' must be a non-empty array of message objects")
    elif endpoint == "completions":
        if not isinstance(doc.get("prompt"), str | list):
            raise bad_param("prompt", "'prompt' must be a string or an array")
    elif endpoint == "embeddings" and not isinstance(doc.get("input"), str | list):
        raise bad_param("input", "'input' must be a string or an array")
    if "stream" in doc and doc["stream"] is not None and not isinstance(doc["stream"], bool):
        raise bad_param("stream", "'stream' must be a boolean")
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_param("stream_options", "'stream_options' must be an object")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        _positive_int(doc, name)
    return model
