"""The Starlette app: routes, the request-id middleware, the error handler and the lifespan that builds the state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wattgate.classifier.api import Predictor
from wattgate.gateway.dashboard import Sampler, dashboard_asset, dashboard_data, dashboard_page, run_sampler
from wattgate.gateway.energy_meter import EnergyMeter, parse_key_names
from wattgate.gateway.errors import ApiError, GatewayError, handle_error
from wattgate.gateway.frontdoor import FrontDoor
from wattgate.gateway.http import ApiKeyError, check_admin_key, check_api_key, header
from wattgate.gateway.proxy import ProxyEndpoint, new_request_id
from wattgate.gateway.settings import GatewaySettings
from wattgate.gateway.state import GatewayState
from wattgate.planner.contract import Keys

log = logging.getLogger("wattgate.gateway")

BackgroundTask = Callable[[GatewayState], Coroutine[Any, Any, None]]


class RequestIdMiddleware:
    """Accept the client's ``x-request-id`` or make one, and put it on every response (errors too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = header(scope, b"x-request-id")
        if not rid or len(rid) > 200:
            rid = new_request_id()
        scope["wattgate.request_id"] = rid
        raw = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    message["headers"] = [*headers, (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class GatewayApp(Starlette):
    """Starlette, with the proxy's own paths served directly (POST only, no root path).

    Those requests skip the router and three middleware layers, each of which wraps ``send`` again
    for every piece of a stream: most of the gateway's own cost per streamed token. They get what the
    stack would give them: the request id, and errors turned into OpenAI error bodies here.
    """

    def __init__(self, *, proxies: dict[str, ProxyEndpoint], front_door: FrontDoor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxies = proxies
        self.front_door = front_door  # the server's connection-level limits (``frontdoor.server_options``)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.proxies.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                await _serve_proxy(endpoint, scope, receive, send)
                return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_counted)
        finally:  # every response is counted; the proxy's count themselves
            state: GatewayState | None = getattr(self.state, "gateway", None)
            if state is not None:
                state.metrics.request_done(_endpoint_of(scope["path"]), "", status)


_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
    "/health": "health",
    "/ready": "ready",
    "/metrics": "metrics",
}


def _endpoint_of(path: str) -> str:
    """The ``endpoint`` label of a path (a closed set: a path a client makes up is ``other``)."""
    if path == "/dashboard" or path.startswith("/dashboard/"):
        return "dashboard"
    return _ENDPOINTS.get(path, "other")


async def _serve_proxy(endpoint: ProxyEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
    rid = header(scope, b"x-request-id")
    if not rid or len(rid) > 200:
        rid = new_request_id()
    scope["wattgate.request_id"] = rid
    try:
        await endpoint(scope, receive, send)
    except Exception as exc:  # noqa: BLE001  (the one handler turns every error into an error body)
        response = await handle_error(Request(scope), exc)  # logs what is not an ApiError
        response.headers["x-request-id"] = rid
        try:
            await response(scope, receive, send)
        except RuntimeError:  # the response had started: re-raise, and uvicorn closes the connection
            raise exc from None


async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    check_api_key(request.scope, state.settings.api_keys)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "wattgate"} for m in state.models()]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Open to probes; the model list only to callers with a key when keys are configured."""
    state: GatewayState = request.app.state.gateway
    if state.any_ready():
        try:
            check_api_key(request.scope, state.settings.api_keys)
        except ApiKeyError:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "ready", "models": state.models()})
    raise ApiError(
        503, "no ready backend instance", type_="server_error", code="not_ready", headers={"retry-after": "1"}
    )


async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    if state.settings.protect_metrics:
        check_admin_key(request.scope, state.settings)
    state.count_instances()
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _admin(endpoint: Callable[[Request], Coroutine[Any, Any, Response]]) -> Callable[[Request], Any]:
    """``endpoint`` behind the admin key check when ``protect_dashboard`` is on (and a key is configured)."""

    async def guarded(request: Request) -> Response:
        state: GatewayState = request.app.state.gateway
        if state.settings.protect_dashboard:
            check_admin_key(request.scope, state.settings, realm="wattgate dashboard")
        return await endpoint(request)

    return guarded


def create_app(
    settings: GatewaySettings, predictor: Predictor | None = None, background: Sequence[BackgroundTask] = ()
) -> GatewayApp:
    """Build the gateway. ``predictor`` replaces the max_tokens fallback; ``background`` tasks (e.g. a
    classifier watcher that calls ``state.predictor.swap``) run for the app's lifetime."""

    front_door = FrontDoor(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = GatewayState.build(settings, predictor)
        app.state.gateway = state
        front_door.metrics = state.metrics
        front_door.start()
        store = None
        if settings.redis_url:
            from wattgate.gateway.store import RedisStore  # noqa: PLC0415  (redis only when configured)

            store = RedisStore(
                settings.redis_url,
                Keys(settings.redis_prefix),
                state.metrics,
                settings.record_buffer,
                settings.redis_timeout_s,
            )
            state.store = store
        await state.probe_all()
        state.tasks.append(asyncio.create_task(state.run_prober(), name="prober"))
        stop_flusher = asyncio.Event()
        flusher: asyncio.Task[None] | None = None
        if store is not None:  # stopped by its event, not cancelled: a cancel mid-flush would lose the batch
            flusher = asyncio.create_task(store.run_flusher(settings.flush_interval_s, stop_flusher), name="flusher")
            state.tasks.append(
                asyncio.create_task(
                    store.watch_instances(state.apply_registry, settings.registry_refresh_s), name="registry"
                )
            )
            state.tasks.append(
                asyncio.create_task(store.watch_plan(state.apply_plan, settings.registry_refresh_s), name="plan")
            )
            state.energy = meter = EnergyMeter(
                state.metrics,
                carbon=settings.energy_carbon_g_per_kwh,
                max_open_s=settings.energy_max_open_s,
                prefill_weight=settings.energy_prefill_weight,
                key_names=parse_key_names(settings.energy_key_names),
                sink=store,
                share=store,  # several replicas split each instance's seconds over all their requests
            )
            energy = meter.run(store.load_energy, state.energy_labels, time.time, settings.energy_interval_s)
            state.tasks.append(asyncio.create_task(energy, name="energy"))
        sampler = Sampler(state.metrics, store)
        app.state.dashboard = sampler
        state.tasks.append(
            asyncio.create_task(
                run_sampler(sampler, lambda: {k: i.in_flight for k, i in state.instances.items()}), name="dashboard"
            )
        )
        for task in background:
            state.tasks.append(asyncio.create_task(task(state)))
        log.info(
            "gateway ready on %s:%d: %s; redis %s",
            settings.host,
            settings.port,
            state.static_summary(),
            "on (instances registered by agents)" if store else "off",
        )
        try:
            yield
        finally:
            for t in state.tasks:
                t.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            if store is not None and flusher is not None:
                stop_flusher.set()  # it flushes once more and returns
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(flusher), timeout=2.0)
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                with contextlib.suppress(asyncio.TimeoutError):  # what was recorded during that last flush
                    await asyncio.wait_for(store.flush(), timeout=2.0)
                await store.close()
            await state.client.aclose()

    proxies = {
        "/v1/chat/completions": ProxyEndpoint("chat"),
        "/v1/completions": ProxyEndpoint("completions"),
        "/v1/embeddings": ProxyEndpoint("embeddings"),
    }
    routes = [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in proxies.items()),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard", _admin(dashboard_page), methods=["GET"]),
        Route("/dashboard/data", _admin(dashboard_data), methods=["GET"]),
        Route("/dashboard/{name}", _admin(dashboard_asset), methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {GatewayError: handle_error, HTTPException: handle_error, Exception: handle_error}
    return GatewayApp(
        proxies=proxies,
        front_door=front_door,
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


__all__ = ["create_app", "json"]
