"""The proxy endpoint (an ASGI app): read, validate, classify, pick an instance, forward, record.

Retries: a connect error, a connection closed without an answer, or a 5xx before any byte went to the
client is retried once on another instance; never after. Who is blamed (outlier detection): a connect
error is always the instance's; a failure the second instance reproduces is the request's (the client
gets it, nobody is blamed); a failure another instance did not repeat is the first one's. A client
disconnect or the request's deadline cancels the upstream request at once (``guard.RequestGuard``
cancels the handler task, which closes the upstream response).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import secrets
import time
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from wattgate.classifier.api import MaxTokensPredictor, Prediction, requested_max_tokens
from wattgate.classifier.observe import observation
from wattgate.gateway.energy_meter import key_label
from wattgate.gateway.energy_usage import with_energy
from wattgate.gateway.errors import ApiError, api_error_response, as_json_object, error_body, upstream_error_body
from wattgate.gateway.guard import CLIENT_GONE, FIRST_BYTE, RequestGuard
from wattgate.gateway.http import (
    ClientGone,
    check_api_key,
    client_key,
    downstream_headers,
    header,
    read_body,
    validate,
)
from wattgate.gateway.routing import expected_output_tokens, request_type
from wattgate.gateway.settings import Deadline
from wattgate.gateway.sse import SseRelay
from wattgate.gateway.state import GatewayState
from wattgate.gateway.transport import Upstream
from wattgate.gateway.upstream import Job, connect, end, read_all

log = logging.getLogger("wattgate.gateway.proxy")

_FALLBACK = MaxTokensPredictor()
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)
_USAGE_OPTION = b'"stream_options":{"include_usage":true}'


def new_request_id() -> str:
    """Unique per process run without a random-number syscall per request: random prefix + counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class ProxyEndpoint:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState = scope["app"].state.gateway
        settings = state.settings
        t0 = time.perf_counter()
        request_id = scope.get("wattgate.request_id") or header(scope, b"x-request-id") or new_request_id()
        try:
            check_api_key(scope, settings.api_keys)
            raw = await read_body(scope, receive, settings.max_body_bytes, settings.client_body_timeout_s)
            job = self._prepare(state, raw, request_id, t0)
        except ClientGone:
            state.metrics.request_done(self.endpoint, "-", 499)
            return
        except ApiError as exc:
            state.metrics.request_done(self.endpoint, "-", exc.status)
            raise
        except Exception:  # a bug: counted, then the one handler answers 500 and logs it
            state.metrics.request_done(self.endpoint, "-", 500)
            raise
        if state.energy is not None:
            job.key = key_label(client_key(scope), state.energy.key_names)
        me = asyncio.current_task()
        deadline = settings.deadline(job.rtype.name if job.rtype else None)
        spent = time.perf_counter() - t0
        guard = RequestGuard(
            receive, me, deadline.first_byte_s - spent if job.stream else None, deadline.total_s - spent
        )
        try:
            await self._forward(state, scope, send, job, guard)
        except ApiError as exc:
            job.status = exc.status
            raise
        except asyncio.CancelledError:
            if me is None or guard.reason is None:
                raise
            me.uncancel()  # our own guard cancelled us
            if guard.reason == CLIENT_GONE:
                job.status = 499
                log.info("client went away, upstream cancelled (request %s)", job.request_id)
            else:
                await self._deadline_passed(state, send, job, guard.reason, deadline)
        finally:
            guard.close()
            self._finish(state, job)

    @staticmethod
    async def _deadline_passed(state: GatewayState, send: Send, job: Job, reason: str, deadline: Deadline) -> None:
        """The request ran out of time: its instance is blamed; the client gets a 504, or, when its stream
        had begun, an error event that ends it."""
        state.metrics.deadlines.labels(reason).inc()
        if job.instance is not None:
            state.note_failure(job.instance, connect_error=False)
        if reason == FIRST_BYTE:
            where = job.instance.id if job.instance is not None else "-"
            message = f"no answer from instance {where} within {deadline.first_byte_s:g} s"
        else:
            message = f"the request did not finish within its deadline of {deadline.total_s:g} s"
        log.warning("%s (request %s)", message, job.request_id)
        job.status = 504
        if not job.started:
            raise ApiError(504, message, type_="server_error", code="deadline_exceeded")
        event = b"data: " + error_body(message, "server_error", None, "deadline_exceeded") + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": False})

    def _prepare(self, state: GatewayState, raw: bytes, request_id: str, t0: float) -> Job:
        doc = as_json_object(raw, state.settings.max_json_depth)
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

    async def _forward(self, state: GatewayState, scope: Scope, send: Send, job: Job, guard: RequestGuard) -> None:
        resp = await connect(state, scope, job)
        try:
            ctype = resp.header(b"content-type")
            if job.stream and resp.status == 200 and ctype.startswith(b"text/event-stream"):
                await self._relay_stream(state, resp, send, job, guard)
                return
            body = await read_all(resp, state.settings.max_response_bytes)
            job.ttft_s = time.perf_counter() - job.t0
            extra = [(b"content-length", str(len(body)).encode())]
            if resp.status >= 400:  # every error the client sees is an OpenAI error body, whatever the backend sent
                body = upstream_error_body(resp.status, body)
                extra = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
            elif resp.status == 200 and ctype.startswith(b"application/json"):
                job.usage = _usage_of(body)
                energy = _energy_estimate(state, job, job.usage)
                if energy is not None:
                    body = with_energy(body, energy)
                    extra = [(b"content-length", str(len(body)).encode())]
            guard.finished = True
            await send(_start(resp, job, extra=extra, replace_type=resp.status >= 400))
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            await resp.aclose()

    async def _relay_stream(
        self, state: GatewayState, resp: Upstream, send: Send, job: Job, guard: RequestGuard
    ) -> None:
        relay = SseRelay(
            strip_usage=not job.client_wants_usage,
            on_usage=(lambda usage: _energy_estimate(state, job, usage)) if job.work is not None else None,
        )
        work = job.work
        await send(_start(resp, job, extra=[(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]))
        job.started = True
        try:
            while chunk := await resp.next_chunk():
                out = relay.feed(chunk)
                if resp.ended:  # nothing more will come: these bytes go out with the end of the body
                    break
                if out:
                    if job.ttft_s is None and relay.events:  # the first event (a comment is no answer yet)
                        job.ttft_s = time.perf_counter() - job.t0
                        guard.first_event = True
                        if work is not None:
                            work.first = time.time()
                    if work is not None:
                        work.output_tokens = relay.events
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
        guard.finished = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _finish(self, state: GatewayState, job: Job) -> None:
        inst = job.instance
        if job.energy is None and job.work is not None and job.started:  # a stream without usage, or cut short
            _energy_estimate(state, job, job.usage)
        end(state, job)
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
        energy = job.energy
        if energy is not None:
            log.debug("request %s: %.3f J (%s, estimate)", job.request_id, energy.energy_j, energy.source)
        obs = observation(
            job.prediction,
            keep_text_slots=state.settings.classifier_text_slots,
            request_id=job.request_id,
            pool=job.pool,
            predicted_type=job.rtype.name if job.rtype else "-",
            input_tokens=int(usage.get("prompt_tokens") or job.prediction.input_tokens),
            output_tokens=int(usage.get("completion_tokens") or job.events),
            ttft_s=job.ttft_s if job.stream else None,
            tbt_s=job.tbt_s,
            status=status,
            instance=inst.id,
            model=job.model,
            ts=time.time(),
        )
        if energy is not None:
            obs = dataclasses.replace(obs, energy_j=round(energy.energy_j, 3), energy_source=energy.source)
        store.record_observation(obs)


def _start(resp: Upstream, job: Job, extra: list[tuple[bytes, bytes]], replace_type: bool = False) -> dict[str, Any]:
    job.status = job.status or resp.status
    inst = job.instance
    headers = downstream_headers(resp.headers)
    if replace_type:
        headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    headers += [
        (b"x-request-id", job.request_id.encode("latin-1")),
        (b"x-wattgate-pool", job.pool.encode()),
        (b"x-wattgate-instance", (inst.id if inst else "-").encode()),
        *extra,
    ]
    return {"type": "http.response.start", "status": resp.status, "headers": headers}


def _energy_estimate(state: GatewayState, job: Job, usage: dict[str, Any] | None) -> dict[str, object] | None:
    """The answer ended: fix the request's tokens (the usage's, else the prediction's and the events') and
    return the ``usage.energy`` object of its estimate (None: its instance has no energy counter)."""
    meter, work, inst = state.energy, job.work, job.instance
    if meter is None or work is None or inst is None:
        return None
    usage = usage or {}
    prompt = usage.get("prompt_tokens")
    output = usage.get("completion_tokens")
    est = meter.finish(
        inst.id,
        work,
        time.time(),
        prompt if isinstance(prompt, int) else work.input_tokens,
        output if isinstance(output, int) else work.output_tokens,
    )
    job.energy = est
    return est.usage() if est is not None else None


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
