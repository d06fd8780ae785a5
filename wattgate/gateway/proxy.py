"""The proxy endpoint (an ASGI app): read, validate, classify, pick an instance, forward, record.

Retries: a connect error or a 5xx before any byte went to the client is retried once on another
instance; never after. A client disconnect cancels the upstream request at once (the watcher
below cancels the handler task, which closes the upstream response); the watcher starts once a
request has lasted ``WATCH_AFTER_S``, so the many requests that finish sooner pay for a timer only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from wattgate.classifier.api import MaxTokensPredictor, Prediction, requested_max_tokens
from wattgate.gateway.errors import ApiError, api_error_response, as_json_object, error_body
from wattgate.gateway.http import (
    ClientGone,
    check_api_key,
    downstream_headers,
    header,
    read_body,
    upstream_headers,
    validate,
)
from wattgate.gateway.routing import Instance, choose, expected_output_tokens, request_type
from wattgate.gateway.sse import SseRelay
from wattgate.gateway.state import GatewayState
from wattgate.gateway.transport import FastTransport, Upstream, send_via_httpx
from wattgate.planner.contract import Observation
from wattgate.profiles.classes import RequestType

log = logging.getLogger("wattgate.gateway.proxy")

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
_FALLBACK = MaxTokensPredictor()
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)
WATCH_AFTER_S = 0.05  # a request still running after this long gets a disconnect watcher
_USAGE_OPTION = b'"stream_options":{"include_usage":true}'


def new_request_id() -> str:
    """Unique per process run without a random-number syscall per request: random prefix + counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass
class Job:
    """One request on its way: what was decided for it and what was measured."""

    request_id: str
    endpoint: str
    model: str
    body: bytes
    stream: bool
    client_wants_usage: bool
    prediction: Prediction | None
    rtype: RequestType | None
    work_tokens: int
    t0: float
    pool: str = "-"
    instance: Instance | None = None
    status: int = 0
    ttft_s: float | None = None
    tbt_s: float | None = None
    usage: dict[str, Any] | None = None
    events: int = 0


class ProxyEndpoint:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState = scope["app"].state.gateway
        t0 = time.perf_counter()
        request_id = scope.get("wattgate.request_id") or header(scope, b"x-request-id") or new_request_id()
        try:
            check_api_key(scope, state.settings.api_keys)
            raw = await read_body(scope, receive, state.settings.max_body_bytes)
            job = self._prepare(state, raw, request_id, t0)
        except ClientGone:
            return
        except ApiError as exc:
            state.metrics.request_done(self.endpoint, "-", exc.status)
            raise
        me = asyncio.current_task()
        watch = _DisconnectWatch(receive, me)
        try:
            await self._forward(state, scope, send, job, watch)
        except ApiError as exc:
            job.status = exc.status
            raise
        except asyncio.CancelledError:
            if me is None or not watch.fired:
                raise
            me.uncancel()  # our own watcher cancelled us: the client left
            job.status = 499
            log.info("client went away, upstream cancelled (request %s)", job.request_id)
        finally:
            watch.close()
            self._finish(state, job)

    def _prepare(self, state: GatewayState, raw: bytes, request_id: str, t0: float) -> Job:
        doc = as_json_object(raw)
        model = validate(doc, self.endpoint)
        if not any(i.serves(model) for i in state.instances.values()):
            unknown = state.models_unknown()
            if unknown:  # it may be theirs: a down backend is not a wrong model name
                raise ApiError(
                    503,
                    f"no reachable backend serves the model '{model}'; {len(unknown)} backend(s) whose models are "
                    f"not known yet do not answer ({', '.join(unknown)})",
                    type_="server_error",
                    code="backend_unavailable",
                    headers={"retry-after": str(state.settings.retry_after_s)},
                )
            raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        stream = doc.get("stream") is True and self.endpoint != "embeddings"
        options = doc.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        if stream and not wants_usage and state.settings.request_usage_in_stream:
            raw = _with_usage_option(raw, doc, options)
        prediction, rtype, work = None, None, 0
        if self.endpoint != "embeddings":
            prediction = _predict(state, doc, self.endpoint)
            rtype = request_type(prediction, state.settings.edges)
            work = prediction.input_tokens + expected_output_tokens(
                prediction, state.settings.edges, requested_max_tokens(doc)
            )
        return Job(request_id, self.endpoint, model, raw, stream, wants_usage, prediction, rtype, work, t0)

    async def _forward(self, state: GatewayState, scope: Scope, send: Send, job: Job, watch: _DisconnectWatch) -> None:
        resp = await self._connect(state, scope, job)
        try:
            ctype = resp.header(b"content-type")
            if job.stream and resp.status == 200 and ctype.startswith(b"text/event-stream"):
                await self._relay_stream(resp, send, job, watch)
            else:
                body = await _read_all(resp)
                job.ttft_s = time.perf_counter() - job.t0
                if resp.status == 200 and ctype.startswith(b"application/json"):
                    job.usage = _usage_of(body)
                watch.finished = True
                await send(_start(resp, job, extra=[(b"content-length", str(len(body)).encode())]))
                await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            await resp.aclose()

    async def _connect(self, state: GatewayState, scope: Scope, job: Job) -> Upstream:
        """Send upstream, retrying once on another instance after a connect error or a 5xx."""
        tried: set[str] = set()
        last: Upstream | None = None
        for attempt in range(2):
            picked = choose(state.instances.values(), job.model, job.rtype, time.monotonic(), tried, state.routes)
            if picked is None:
                break
            if last is not None:
                await last.aclose()
                last = None
            if attempt:
                state.metrics.retries.inc()
            inst, pool = picked
            tried.add(inst.id)
            self._begin(state, job, inst, pool)
            url = _url(inst.spec.base_url + _PATHS[job.endpoint])
            headers = upstream_headers(scope, job.request_id, inst.spec.api_key)
            if not attempt:
                state.metrics.overhead.observe(time.perf_counter() - job.t0)
            try:
                transport = state.transport
                assert transport is not None
                if isinstance(transport, FastTransport):
                    resp = await transport.post(url, headers, job.body, state.timeouts)
                else:
                    resp = await send_via_httpx(transport, url, headers, job.body, state.timeouts)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                log.warning("instance %s: %s (request %s)", inst.id, exc.__class__.__name__, job.request_id)
                state.note_failure(inst, connect_error=not isinstance(exc, httpx.RemoteProtocolError))
                self._end(state, job)
                continue
            except httpx.TimeoutException as exc:
                state.note_failure(inst, connect_error=False)
                raise ApiError(
                    504, f"instance {inst.id} timed out", type_="server_error", code="upstream_timeout"
                ) from exc
            except httpx.HTTPError as exc:
                state.note_failure(inst, connect_error=False)
                raise ApiError(
                    502,
                    f"instance {inst.id} failed: {exc.__class__.__name__}",
                    type_="server_error",
                    code="upstream_error",
                ) from exc
            if resp.status >= 500:
                state.note_failure(inst, connect_error=False)
                last = resp
                if attempt == 0:
                    self._end(state, job)
                continue
            if resp.status < 400:
                state.note_success(inst)
            return resp
        if last is not None:
            return last  # the second 5xx goes to the client as the backend said it
        raise _nothing_took_it(state, job, bool(tried))

    @staticmethod
    def _begin(state: GatewayState, job: Job, inst: Instance, pool: str) -> None:
        job.instance, job.pool = inst, pool
        inst.in_flight += 1
        inst.outstanding_tokens += job.work_tokens
        state.metrics.in_flight.labels(inst.id).set(inst.in_flight)
        store = state.store
        if store is not None and job.prediction is not None:
            store.record_load(
                job.rtype.name if job.rtype else pool,
                time.time(),
                job.prediction.input_tokens,
                job.work_tokens - job.prediction.input_tokens,
            )

    @staticmethod
    def _end(state: GatewayState, job: Job) -> None:
        inst = job.instance
        if inst is None:
            return
        inst.in_flight -= 1
        inst.outstanding_tokens -= job.work_tokens
        state.metrics.in_flight.labels(inst.id).set(inst.in_flight)
        job.instance = None

    async def _relay_stream(self, resp: Upstream, send: Send, job: Job, watch: _DisconnectWatch) -> None:
        relay = SseRelay(strip_usage=not job.client_wants_usage)
        await send(_start(resp, job, extra=[(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]))
        try:
            while chunk := await resp.next_chunk():
                out = relay.feed(chunk)
                if resp.ended:  # nothing more will come: these bytes go out with the end of the body
                    break
                if out:
                    if job.ttft_s is None:
                        job.ttft_s = time.perf_counter() - job.t0
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            else:
                out = b""
            tail = out + relay.flush()
        except httpx.HTTPError as exc:
            log.warning("stream from %s broke: %s (request %s)", job.pool, exc.__class__.__name__, job.request_id)
            job.status = 502
            msg = error_body(f"upstream stream broke: {exc.__class__.__name__}", "server_error", None, "upstream_error")
            tail = b"data: " + msg + b"\n\n"
        if tail and job.ttft_s is None:
            job.ttft_s = time.perf_counter() - job.t0
        job.usage, job.tbt_s, job.events = relay.usage, relay.tbt_s(), relay.events
        watch.finished = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _finish(self, state: GatewayState, job: Job) -> None:
        inst = job.instance
        self._end(state, job)
        status = job.status or 500
        state.metrics.request_done(self.endpoint, job.pool, status)
        if job.ttft_s is not None and job.stream:
            state.metrics.observe_ttft(job.pool, job.ttft_s)
        if job.tbt_s is not None:
            state.metrics.observe_tbt(job.pool, job.tbt_s)
        store = state.store
        if store is None or job.prediction is None or inst is None:
            return
        usage = job.usage or {}
        store.record_observation(
            Observation(
                request_id=job.request_id,
                pool=job.pool,
                predicted_type=job.rtype.name if job.rtype else "-",
                output_probs=list(job.prediction.output_probs),
                input_tokens=int(usage.get("prompt_tokens") or job.prediction.input_tokens),
                output_tokens=int(usage.get("completion_tokens") or job.events),
                ttft_s=job.ttft_s if job.stream else None,
                tbt_s=job.tbt_s,
                status=status,
                instance=inst.id,
                model=job.model,
                ts=time.time(),
                features=dict(job.prediction.features),
            )
        )


def _nothing_took_it(state: GatewayState, job: Job, tried: bool) -> ApiError:
    if tried:
        return ApiError(502, "no instance could be reached", type_="server_error", code="upstream_unreachable")
    pool = job.rtype.name if job.rtype else "any"
    state.metrics.no_capacity.labels(pool).inc()
    return ApiError(
        503,
        f"no instance of model '{job.model}' can take this request now (pool {pool}); retry later",
        type_="server_error",
        code="no_capacity",
        headers={"retry-after": str(state.settings.retry_after_s)},
    )


async def _read_all(resp: Upstream) -> bytes:
    """The whole upstream body; nothing went to the client yet, so a failure is a clean 502/504."""
    chunks = []
    try:
        while chunk := await resp.next_chunk():
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise ApiError(504, "upstream timed out mid-response", type_="server_error", code="upstream_timeout") from exc
    except httpx.HTTPError as exc:
        name = exc.__class__.__name__
        raise ApiError(
            502, f"upstream failed mid-response: {name}", type_="server_error", code="upstream_error"
        ) from exc
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _start(resp: Upstream, job: Job, extra: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    job.status = job.status or resp.status
    inst = job.instance
    headers = downstream_headers(resp.headers)
    headers += [
        (b"x-request-id", job.request_id.encode("latin-1")),
        (b"x-wattgate-pool", job.pool.encode()),
        (b"x-wattgate-instance", (inst.id if inst else "-").encode()),
        *extra,
    ]
    return {"type": "http.response.start", "status": resp.status, "headers": headers}


def _predict(state: GatewayState, doc: dict[str, Any], endpoint: str) -> Prediction:
    try:
        return state.predictor.current.predict(doc, endpoint)
    except Exception:  # a broken model must not fail requests: fall back, and say so
        log.exception("predictor failed; using the max_tokens fallback")
    try:
        return _FALLBACK.predict(doc, endpoint)
    except (TypeError, ValueError, AttributeError):  # odd content shapes the backend will judge
        return Prediction(input_tokens=1, output_probs=(1 / 3, 1 / 3, 1 / 3), method="unknown")


_DECODER = json.JSONDecoder()
_URLS: dict[str, httpx.URL] = {}


def _url(text: str) -> httpx.URL:
    """Parsed upstream URLs, cached: parsing one costs more than the rest of building the request."""
    url = _URLS.get(text)
    if url is None:
        if len(_URLS) > 10_000:
            _URLS.clear()
        url = _URLS[text] = httpx.URL(text)
    return url


def _usage_of(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a JSON response, decoded alone (it comes last; the text before is skipped)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    try:
        text = body[at + 7 :].decode()
        colon = text.index(":")
        usage, _ = _DECODER.raw_decode(text, colon + 1 + (len(text[colon + 1 :]) - len(text[colon + 1 :].lstrip())))
    except (ValueError, UnicodeDecodeError):
        return None
    return usage if isinstance(usage, dict) else None


class _DisconnectWatch:
    """Cancels the request's task when the client goes away before the response is finished.

    The watcher task is started by a timer after ``WATCH_AFTER_S``: a request that ends sooner costs
    one timer, not a task; one that lasts is watched from then on (a client that left earlier is
    seen at once, since ``receive`` then answers ``http.disconnect`` immediately).
    """

    __slots__ = ("finished", "fired", "receive", "task", "timer", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        self.receive, self.task = receive, task
        self.finished = False  # the response is complete (or its last message is being sent)
        self.fired = False  # we cancelled the task because the client left
        self.watcher: asyncio.Task[None] | None = None
        self.timer = task.get_loop().call_later(WATCH_AFTER_S, self._start) if task else None

    def _start(self) -> None:
        if not self.finished:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        message = await self.receive()
        if message["type"] == "http.disconnect" and self.task is not None and not self.finished:
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


def _with_usage_option(raw: bytes, doc: dict[str, Any], options: dict[str, Any]) -> bytes:
    """The body with ``stream_options.include_usage`` set. When the client sent no ``stream_options``, the
    option is spliced in after the opening brace (the client's bytes are kept, no re-serialisation);
    otherwise, or for a body that is not plain UTF-8 (json accepts UTF-16/32 too), the document is re-encoded."""
    start = len(raw) - len(raw.lstrip(b" \t\r\n"))
    if "stream_options" not in doc and raw[start : start + 1] == b"{" and b"\x00" not in raw[:4]:
        return raw[: start + 1] + _USAGE_OPTION + b"," + raw[start + 1 :]
    doc["stream_options"] = {**options, "include_usage": True}
    return json.dumps(doc, separators=(",", ":")).encode()


__all__ = ["ProxyEndpoint", "api_error_response"]
