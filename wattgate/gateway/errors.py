"""The gateway's exception tree and the one place that turns errors into OpenAI-format error bodies.

GatewayError                 base of every error the gateway raises on purpose
├── ConfigError              bad settings (file, environment or flags); the CLI prints it, exit 2
├── StartupError             the port, Redis or every backend is unusable at start; the CLI prints it, exit 1
└── ApiError                 a request that gets an OpenAI error body with an HTTP status
    ├── (400) invalid JSON or field, naming the parameter
    ├── (401) missing or wrong API key
    ├── (404) unknown model or path
    ├── (408) request body not received in time
    ├── (413) body over the configured limit
    ├── (502/504) upstream failed or timed out (httpx errors are translated in proxy.py)
    └── (503) no instance can take the request, with Retry-After
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("wattgate.gateway")


class GatewayError(Exception):
    """Base exception of the gateway package."""


class ConfigError(GatewayError):
    """Settings that cannot work; the message says which option and why."""


class StartupError(GatewayError):
    """The gateway cannot start: its port is taken, its Redis does not answer, or no backend does."""


class ApiError(GatewayError):
    """An error the client sees as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    doc = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(doc, separators=(",", ":")).encode()


def api_error_response(exc: ApiError) -> Response:
    return Response(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


_HTTP_CODES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error a client can see goes through here."""
    if isinstance(exc, ApiError):
        return api_error_response(exc)
    if isinstance(exc, HTTPException):
        type_, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", None))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return api_error_response(
            ApiError(exc.status_code, message, type_=type_, code=code, headers=dict(exc.headers or {}))
        )
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return api_error_response(ApiError(500, "internal gateway error", type_="server_error", code="internal_error"))


def bad_param(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def as_json_object(raw: bytes, max_depth: int = 128) -> dict[str, Any]:
    """Parse a request body that must be a JSON object nested at most ``max_depth`` deep, or raise a 400
    saying what is wrong (Python's parser recurses: a body nested ~1,000 deep would exhaust the stack)."""
    if json_too_deep(raw, max_depth):
        raise ApiError(400, f"request body is nested deeper than {max_depth} levels", code="invalid_json")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return doc


_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether the arrays and objects of ``raw`` nest deeper than ``max_depth`` (brackets inside strings
    do not count). Scans only bodies with more brackets than that, which is rare."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    depth = 0
    for m in _TOKENS.finditer(raw):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def upstream_error_body(status: int, body: bytes) -> bytes:
    """A backend's error answer as an OpenAI error body: an OpenAI-shaped one keeps its fields (the four
    of them, no more), vLLM's older top-level form and other JSON are mapped, and plain text or HTML
    (a proxy's 502 page, an engine's one-line error) becomes the message."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    inner = doc.get("error") if isinstance(doc, dict) else None
    source = inner if isinstance(inner, dict) else doc if isinstance(doc, dict) and "message" in doc else None
    if source is not None:
        message = source.get("message")
        kind, param, code = source.get("type"), source.get("param"), source.get("code")
        return error_body(
            str(message) if message is not None else f"backend answered HTTP {status}",
            kind if isinstance(kind, str) and kind else default_type,
            param if isinstance(param, str) else None,
            str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        )
    if isinstance(inner, str):  # TGI: {"error": "...", "error_type": "..."}
        text = inner
    elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):  # FastAPI
        text = doc["detail"]
    else:
        text = " ".join(body[:2000].decode("utf-8", "replace").split())[:300]
    return error_body(
        f"backend answered HTTP {status}: {text}" if text else f"backend answered HTTP {status}",
        default_type,
        None,
        "upstream_error",
    )
