"""``wattgate gateway``: the OpenAI-compatible gateway in front of existing servers and agent-registered instances."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible gateway",
        description="Serve the OpenAI API and route each request to the pool of instances tuned for its class.",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL[#hints]",
        help="an existing OpenAI-compatible server (repeatable); hints: "
        "#model=NAME,pool=SS,max_concurrency=N,api_key_env=VAR,id=NAME,health_path=/health",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings file (every option; flags win)")
    p.add_argument("--redis-url", help="redis://[:password@]host:port/db or rediss:// (TLS); env WATTGATE_REDIS_URL")
    p.add_argument("--redis-prefix", help="key prefix shared by one deployment (default wg)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8080)")
    p.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY", help="accept this client key (repeatable)"
    )
    p.add_argument("--api-keys-env", metavar="VAR", help="environment variable holding comma-separated client keys")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 8 MiB); larger gets 413")
    p.add_argument("--connect-timeout-s", type=float, help="upstream connect timeout (default 5)")
    p.add_argument("--read-timeout-s", type=float, help="upstream read timeout between bytes (default 600)")
    p.add_argument("--max-connections", type=int, help="upstream connection pool size (default 2000)")
    p.add_argument("--health-interval-s", type=float, help="active /health probe period (default 5)")
    p.add_argument("--eject-cooldown-s", type=float, help="how long a failing instance is skipped (default 10)")
    p.add_argument("--eject-after-failures", type=int, help="consecutive 5xx before ejection (default 3)")
    p.add_argument(
        "--classifier",
        choices=["model", "max_tokens"],
        help="output-length prediction: the shipped trained model (default) or max_tokens only",
    )
    p.add_argument("--classifier-poll-s", type=float, help="period to look for a retrained classifier in Redis (10)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default info")
    p.add_argument("--access-log", action="store_true", default=None, help="log every request (uvicorn access log)")
    p.set_defaults(func=run)


_FLAGS = [
    "redis_url",
    "redis_prefix",
    "host",
    "port",
    "api_keys",
    "api_keys_env",
    "max_body_bytes",
    "connect_timeout_s",
    "read_timeout_s",
    "max_connections",
    "health_interval_s",
    "eject_cooldown_s",
    "eject_after_failures",
    "classifier",
    "classifier_poll_s",
    "log_level",
    "access_log",
]


def run(args: argparse.Namespace) -> int:
    import logging

    from wattgate.gateway.errors import ConfigError
    from wattgate.gateway.settings import load_settings

    try:
        settings = load_settings(
            args.config, overrides={name: getattr(args, name) for name in _FLAGS}, backend_args=tuple(args.backend)
        )
    except ConfigError as exc:
        print(f"wattgate gateway: {exc}", file=sys.stderr)
        return 2
    if not settings.backends and not settings.redis_url:
        print("wattgate gateway: nothing to route to: give --backend URL and/or --redis-url", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per health probe
    return serve(settings)


def serve(settings: Any) -> int:
    import uvicorn

    from wattgate.gateway.app import create_app
    from wattgate.gateway.classifier_link import build_predictor, classifier_watcher

    background = [classifier_watcher(settings)] if settings.redis_url and settings.classifier == "model" else []
    uvicorn.run(
        create_app(settings, predictor=build_predictor(settings), background=background),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,  # no software banner (and one header less to validate per response)
    )
    return 0
