"""``wattgate gateway``: the OpenAI-compatible gateway in front of existing servers and agent-registered instances."""

from __future__ import annotations

import sys
from typing import Any

from wattgate.gateway.options import OPTIONS
from wattgate.settings.model import Command, Values
from wattgate.settings.parse import add_command


def run(values: Values) -> int:
    import asyncio
    import logging

    from wattgate.gateway import startup
    from wattgate.gateway.errors import ConfigError, StartupError
    from wattgate.gateway.settings import from_values
    from wattgate.listen import ListenError, open_listener

    try:
        settings = from_values(values)
    except ConfigError as exc:
        print(f"wattgate gateway: error: {exc}", file=sys.stderr)
        return 2
    if not settings.backends and not settings.redis_url:
        print("wattgate gateway: error: nothing to route to: give --backend URL and/or --redis-url", file=sys.stderr)
        return 2
    try:  # the port first: a busy one must not leave Redis tasks or tokenizers half started
        sock = open_listener(settings.host, settings.port, "gateway")
        asyncio.run(startup.check(settings))
    except (ListenError, StartupError) as exc:
        print(f"wattgate gateway: error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per health probe
    return serve(settings, sock)


def serve(settings: Any, sock: Any = None) -> int:
    import uvicorn

    from wattgate.gateway.app import create_app
    from wattgate.gateway.classifier_link import build_predictor, classifier_watcher
    from wattgate.gateway.frontdoor import raise_file_limit, server_options

    raise_file_limit()
    background = [classifier_watcher(settings)] if settings.redis_url and settings.classifier == "model" else []
    app = create_app(settings, predictor=build_predictor(settings), background=background)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        **server_options(app.front_door),
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
    return 0


COMMAND = Command(
    "gateway",
    "run the OpenAI-compatible gateway",
    OPTIONS,
    run,
    "Serve the OpenAI API and route each request to the pool of instances tuned for its class. At start it "
    "binds its port, checks that Redis answers (with --redis-url) or that some --backend does, and exits "
    "with one line on stderr if not.",
)
COMMANDS = (COMMAND,)


def register(subparsers: Any) -> None:
    add_command(subparsers, COMMAND)
