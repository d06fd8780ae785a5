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
    p.add_argument("--max-json-depth", type=int, help="deepest nesting of a request body (default 128); deeper: 400")
    p.add_argument("--client-header-timeout-s", type=float, help="a request head must arrive within this (60); 408")
    p.add_argument("--client-body-timeout-s", type=float, help="longest wait between request body reads (60); 408")
    p.add_argument("--client-keepalive-timeout-s", type=float, help="idle keep-alive client connection (default 5)")
    p.add_argument("--max-header-bytes", type=int, help="request line + headers (default 61440); larger gets 431")
    p.add_argument("--max-client-connections", type=int, help="open client connections (0: from the file limit)")
    p.add_argument("--connect-timeout-s", type=float, help="upstream connect timeout (default 5)")
    p.add_argument("--read-timeout-s", type=float, help="upstream read timeout between bytes (default 60)")
    p.add_argument("--first-byte-timeout-s", type=float, help="a stream's first event, from arrival (default 60)")
    p.add_argument("--request-timeout-s", type=float, help="a whole request, retries included (default 300)")
    p.add_argument("--class-deadlines", metavar="TYPE=FB/TOTAL,...", help="per request type, e.g. SS=10/60,LL=120/1800")
    p.add_argument("--max-response-bytes", type=int, help="largest non-streamed answer (default 64 MiB); 502 above")
    p.add_argument("--max-connections", type=int, help="upstream connection pool size (default 2000)")
    p.add_argument("--health-interval-s", type=float, help="active /health probe period (default 5)")
    p.add_argument("--eject-cooldown-s", type=float, help="how long a failing instance is skipped (default 10)")
    p.add_argument("--eject-after-failures", type=int, help="consecutive 5xx before ejection (default 3)")
    p.add_argument("--max-ejection-percent", type=float, help="most of a pool ejected at once (default 10; one may)")
    p.add_argument("--panic-threshold-percent", type=float, help="below this share routable, use all (default 50)")
    p.add_argument(
        "--forward-header", action="append", dest="forward_headers", metavar="NAME", help="pass this request header on"
    )
    p.add_argument(
        "--admin-api-key", action="append", dest="admin_api_keys", metavar="KEY", help="key for /metrics, dashboard"
    )
    p.add_argument("--admin-api-keys-env", metavar="VAR", help="environment variable holding admin keys")
    p.add_argument(
        "--protect-metrics", action=argparse.BooleanOptionalAction, help="/metrics needs a key (default off)"
    )
    p.add_argument(
        "--protect-dashboard", action=argparse.BooleanOptionalAction, help="the dashboard needs a key (default on)"
    )
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
    "max_json_depth",
    "client_header_timeout_s",
    "client_body_timeout_s",
    "client_keepalive_timeout_s",
    "max_header_bytes",
    "max_client_connections",
    "connect_timeout_s",
    "read_timeout_s",
    "first_byte_timeout_s",
    "request_timeout_s",
    "class_deadlines",
    "max_response_bytes",
    "max_connections",
    "health_interval_s",
    "eject_cooldown_s",
    "eject_after_failures",
    "max_ejection_percent",
    "panic_threshold_percent",
    "forward_headers",
    "admin_api_keys",
    "admin_api_keys_env",
    "protect_metrics",
    "protect_dashboard",
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
    from wattgate.gateway.frontdoor import raise_file_limit, server_options

    raise_file_limit()
    background = [classifier_watcher(settings)] if settings.redis_url and settings.classifier == "model" else []
    app = create_app(settings, predictor=build_predictor(settings), background=background)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        **server_options(app.front_door),
    )
    return 0
