"""Small HTTP helpers of the proxy: body reading with limits, the header allow-list, API-key checks, validation."""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import Receive, Scope

from wattgate.gateway.errors import ApiError, bad_param
from wattgate.gateway.settings import GatewaySettings

# The client's request headers a backend gets (an allow-list: anything else, known or not, stays here):
# content negotiation, the client's name, OpenAI's organisation/project/beta selectors and W3C trace
# context. Never credentials or cookies, hop-by-hop or forwarding headers (X-Forwarded-*, X-Real-IP,
# X-Original-URL, ...), nor the length or encoding (the body may be rewritten); ``forward_headers``
# adds names. The gateway sets Content-Type, Accept-Encoding, X-Request-Id and the backend's own key.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"accept", b"user-agent", b"openai-organization", b"openai-project", b"openai-beta",
        b"traceparent", b"tracestate", b"baggage",
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


class ApiKeyError(ApiError):
    """401: a missing or wrong key."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, at most ``limit`` bytes (413 above), each piece within ``timeout_s`` of the one
    before (408 otherwise: nginx's ``client_body_timeout``). Both close the connection, as the rest of
    the body will not be read."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        if timeout_s is None:
            message = await receive()
        else:
            try:
                message = await asyncio.wait_for(receive(), timeout_s)
            except TimeoutError:
                raise ApiError(
                    408, f"request body not received within {timeout_s:g} s", code="request_timeout", headers=_CLOSE
                ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_CLOSE = {"connection": "close"}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"request body is larger than the limit of {limit} bytes", code="request_too_large", headers=_CLOSE
    )


def upstream_headers(
    scope: Scope, request_id: str, api_key: str | None, allowed: frozenset[bytes] = FORWARDED_REQUEST_HEADERS
) -> list[tuple[bytes, bytes]]:
    """The client's headers a backend gets (bytes, as the wire wants them; only the ``allowed`` names, less
    any the client listed in ``Connection``), plus ours."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for k, v in headers:
        if k.lower() == b"connection":  # headers the client named in Connection (any of them) are hop-by-hop
            allowed = allowed - {h.strip().lower() for h in v.split(b",")}
    out = [(k, v) for k, v in headers if k.lower() in allowed]
    out.append((b"content-type", b"application/json"))  # the body is the JSON document the gateway read
    out.append((b"x-request-id", request_id.encode("latin-1")))
    out.append((b"accept-encoding", b"identity"))
    if api_key:
        out.append((b"authorization", b"Bearer " + api_key.encode("latin-1")))
    return out


def downstream_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A backend's response headers the client gets: not hop-by-hop or ours, and only values uvicorn will send."""
    return [(k, v) for k, v in upstream if k.lower() not in _DROP_DOWNSTREAM and not _BAD_VALUE.search(v)]


_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")  # what uvicorn refuses to send (mid-response)


def _presented_key(scope: Scope, basic: bool) -> str:
    given = header(scope, b"authorization") or ""
    scheme, _, credentials = given.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if basic and scheme.lower() == "basic":  # a browser's login prompt: any user name, the key as password
        try:
            return base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return header(scope, b"api-key") or ""


def _check_key(scope: Scope, keys: frozenset[str], basic: bool, realm: str | None) -> None:
    token = _presented_key(scope, basic)
    challenge = {"www-authenticate": f'Basic realm="{realm}"'} if realm else None
    if not token:
        raise ApiKeyError(
            401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key", headers=challenge
        )
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise ApiKeyError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)


def check_api_key(scope: Scope, keys: frozenset[str]) -> None:
    """The client API: ``Authorization: Bearer KEY`` or ``api-key: KEY``, when keys are configured."""
    if keys:
        _check_key(scope, keys, basic=False, realm=None)


def check_admin_key(scope: Scope, settings: GatewaySettings, realm: str | None = None) -> None:
    """/metrics and the dashboard: the admin keys, else the client keys (none configured: open). Basic auth
    is accepted too (the key as password), so a browser (``realm`` set: it asks) and Prometheus can send it."""
    keys = settings.admin_api_keys or settings.api_keys
    if keys:
        _check_key(scope, keys, basic=True, realm=realm)


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
