"""A request's way to an instance: the job, its place in the instances' counters, the attempts, and the blame.

At most two attempts, on two instances: after a connect error, a connection closed without an answer,
or a 5xx, before any byte went to the client. Who is blamed (outlier detection, ``state.note_failure``):
a connect error is always the instance's (it is unreachable, whatever the request); a failure the second
instance reproduces is the request's (the client gets it, nobody is blamed: a bad input must not eject
healthy instances); a failure another instance did not repeat is the first instance's; a failure with no
second instance to try is that instance's. Timeouts are the instance's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import Scope

from wattgate.classifier.api import Prediction
from wattgate.gateway.energy import Work
from wattgate.gateway.energy_meter import Estimate
from wattgate.gateway.errors import ApiError
from wattgate.gateway.http import upstream_headers
from wattgate.gateway.routing import Instance, choose
from wattgate.gateway.state import GatewayState
from wattgate.gateway.transport import FastTransport, Upstream, send_via_httpx
from wattgate.profiles.classes import RequestType

log = logging.getLogger("wattgate.gateway.proxy")

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


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
    started: bool = False  # the response head went to the client
    key: str = "anonymous"  # the API key's label in the energy books
    work: Work | None = None  # its place in the instance's energy ledger (None: the instance has no counter)
    energy: Estimate | None = None  # the energy estimate the response carried


def begin(state: GatewayState, job: Job, inst: Instance, pool: str) -> None:
    """``job`` now runs on ``inst``: count it there, and record the pool's load."""
    job.instance, job.pool = inst, pool
    inst.in_flight += 1
    inst.outstanding_tokens += job.work_tokens
    state.metrics.in_flight.labels(inst.id).set(inst.in_flight)
    if state.energy is not None:
        tokens = job.prediction.input_tokens if job.prediction is not None else 0
        job.work = state.energy.start(inst.id, Work(job.request_id, job.model, job.key, pool, time.time(), tokens))
    store = state.store
    if store is not None and job.prediction is not None:
        store.record_load(
            job.rtype.name if job.rtype else pool,
            time.time(),
            job.prediction.input_tokens,
            job.work_tokens - job.prediction.input_tokens,
        )


def end(state: GatewayState, job: Job) -> None:
    """``job`` left its instance (done, or failed there)."""
    inst = job.instance
    if inst is None:
        return
    inst.in_flight -= 1
    inst.outstanding_tokens -= job.work_tokens
    state.metrics.in_flight.labels(inst.id).set(inst.in_flight)
    work, job.work = job.work, None
    if work is not None and state.energy is not None:
        if work.end is None and not job.status:  # an attempt that failed before any answer: no work to book
            work.input_tokens = work.output_tokens = 0
        state.energy.done(work, job.status or 500, time.time())
    job.instance = None


@dataclass
class _Attempts:
    """What the attempts of one request have seen so far."""

    tried: set[str]
    failed: list[Instance]  # failed this request (a 5xx or a connection closed unanswered), not blamed yet
    last: Upstream | None = None  # the latest 5xx, kept to answer with
    dropped: bool = False  # the latest failure was a connection closed without an answer


async def connect(state: GatewayState, scope: Scope, job: Job) -> Upstream:
    """The upstream answer to ``job`` (its head; the body follows), after at most two attempts."""
    seen = _Attempts(set(), [])
    panic_below = state.settings.panic_threshold_percent / 100
    for attempt in range(2):
        now = time.monotonic()
        picked = choose(
            state.instances.values(),
            job.model,
            job.rtype,
            now,
            seen.tried,
            state.routes,
            panic_below,
            state.settings.spill_any,
        )
        if picked is None:
            break
        if seen.last is not None:
            await seen.last.aclose()
            seen.last = None
        if attempt:
            state.metrics.retries.inc()
        inst, pool = picked
        if not inst.routable(now):
            state.metrics.panic.labels(pool).inc()
        seen.tried.add(inst.id)
        begin(state, job, inst, pool)
        if not attempt:
            state.metrics.overhead.observe(time.perf_counter() - job.t0)
        resp = await _attempt(state, scope, job, inst, seen)
        if resp is None:
            end(state, job)
            continue
        if resp.status >= 500:
            seen.failed.append(inst)
            seen.last, seen.dropped = resp, False
            if attempt == 0:
                end(state, job)
            continue
        for other in seen.failed:  # this instance answered: the failure before was the other's
            state.note_failure(other, connect_error=False)
        if resp.status < 400:
            state.note_success(inst)
        return resp
    _judge(state, job, seen.failed)
    if seen.last is not None:
        return seen.last  # the second 5xx goes to the client (as an OpenAI error body)
    if seen.dropped:
        message = f"instance {seen.failed[-1].id} closed the connection without an answer"
        raise ApiError(502, message, type_="server_error", code="upstream_error")
    raise _nothing_took_it(state, job, bool(seen.tried))


async def _attempt(state: GatewayState, scope: Scope, job: Job, inst: Instance, seen: _Attempts) -> Upstream | None:
    """One send to ``inst``: its answer, or None after a failure another instance may not repeat."""
    url = _url(inst.spec.base_url + PATHS[job.endpoint])
    headers = upstream_headers(scope, job.request_id, inst.spec.api_key, state.forward_headers)
    timeouts = state.timeouts if job.stream else state.whole_timeouts
    transport = state.transport
    assert transport is not None
    try:
        if isinstance(transport, FastTransport):
            return await transport.post(url, headers, job.body, timeouts)
        return await send_via_httpx(transport, url, headers, job.body, timeouts)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # unreachable: the instance's fault
        log.warning("instance %s: %s (request %s)", inst.id, exc.__class__.__name__, job.request_id)
        state.note_failure(inst, connect_error=True)
    except httpx.RemoteProtocolError as exc:  # closed without an answer: the request's fault or the instance's
        log.warning("instance %s closed without an answer: %s (request %s)", inst.id, exc, job.request_id)
        seen.failed.append(inst)
        seen.dropped = True
    except httpx.TimeoutException as exc:
        state.note_failure(inst, connect_error=False)
        raise ApiError(504, f"instance {inst.id} timed out", type_="server_error", code="upstream_timeout") from exc
    except httpx.HTTPError as exc:
        state.note_failure(inst, connect_error=False)
        message = f"instance {inst.id} failed: {exc.__class__.__name__}"
        raise ApiError(502, message, type_="server_error", code="upstream_error") from exc
    return None


def _judge(state: GatewayState, job: Job, failed: list[Instance]) -> None:
    """No instance answered ``job`` well: one that failed alone is blamed; when two failed, the request
    is (it broke both) and nobody is."""
    if len(failed) >= 2:
        state.metrics.request_faults.inc()
        names = ", ".join(i.id for i in failed)
        log.warning("request %s failed on instances %s: the request's fault, nobody blamed", job.request_id, names)
    elif failed:
        state.note_failure(failed[0], connect_error=False)


def _nothing_took_it(state: GatewayState, job: Job, tried: bool) -> ApiError:
    if tried:  # every instance tried refused the connection or never answered it: the model's backends are down
        return ApiError(
            503,
            f"no instance of model '{job.model}' could be reached (connection refused or timed out); retry later",
            type_="server_error",
            code="upstream_unreachable",
            headers={"retry-after": str(state.settings.retry_after_s)},
        )
    pool = job.rtype.name if job.rtype else "any"
    state.metrics.no_capacity.labels(pool).inc()
    return ApiError(
        503,
        f"no instance of model '{job.model}' can take this request now (pool {pool}); retry later",
        type_="server_error",
        code="no_capacity",
        headers={"retry-after": str(state.settings.retry_after_s)},
    )


async def read_all(resp: Upstream, limit: int) -> bytes:
    """The whole upstream body, at most ``limit`` bytes (a 502 above: nothing unbounded is buffered);
    nothing went to the client yet, so a failure is a clean 502/504."""
    declared = resp.header(b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    try:
        while chunk := await resp.next_chunk():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise ApiError(504, "upstream timed out mid-response", type_="server_error", code="upstream_timeout") from exc
    except httpx.HTTPError as exc:
        name = exc.__class__.__name__
        raise ApiError(
            502, f"upstream failed mid-response: {name}", type_="server_error", code="upstream_error"
        ) from exc
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        502,
        f"the backend's answer is larger than the limit of {limit} bytes (max_response_bytes)",
        type_="server_error",
        code="upstream_response_too_large",
    )


_URLS: dict[str, httpx.URL] = {}


def _url(text: str) -> httpx.URL:
    """Parsed upstream URLs, cached: parsing one costs more than the rest of building the request."""
    url = _URLS.get(text)
    if url is None:
        if len(_URLS) > 10_000:
            _URLS.clear()
        url = _URLS[text] = httpx.URL(text)
    return url
