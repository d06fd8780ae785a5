"""A stand-in engine for agent tests that speaks like the real one it replaces.

Launched with vLLM's flags (``MODEL --port P --tensor-parallel-size N --max-num-seqs B``) or sim-backend's
(``--model M --tp N --max-batch B``) it answers as vLLM does: ``GET /health`` 200 with an empty body,
``GET /v1/models`` vLLM's model list (``owned_by: vllm``, ``root``, ``max_model_len``, ``permission``), and
``GET /metrics`` with vLLM's gauges ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` (labels
``engine``, ``model_name``) among its other series. Launched with TGI's flags (``--model-id M --num-shard N
--hostname H --port P --max-concurrent-requests B``) it answers as TGI does: ``/health`` 200 empty, ``/info``,
``/v1/models``, and ``/metrics`` with TGI's unlabelled gauges ``tgi_batch_current_size`` and ``tgi_queue_size``.

Completions (``POST /v1/completions``, ``/v1/chat/completions``) are held for ``STANDIN_REQUEST_S`` seconds:
while held they count as running (up to the batch size) or waiting, in the engine's own metric names. On
SIGTERM the server stops at once and requests still held are cut, as a real engine's would be: only a drain
lets them finish. Other knobs (environment): ``STANDIN_EVENTS_FILE`` (one JSON line per request start/end and
SIGTERM, wall-clock stamped), ``STANDIN_IN_FLIGHT_FILE`` (extra in-flight requests to report),
``STANDIN_IGNORE_SIGTERM``, ``STANDIN_CRASH_AFTER_S``, ``STANDIN_UNHEALTHY``, ``STANDIN_ARGV_FILE``,
``STANDIN_FAIL_START`` (an engine that cannot load its model: says why, exits 1). vLLM's sleep mode and
streamed answers are ``fake_vllm.py``'s (warm standby tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Engine:
    """Requests held right now, and how the engine reports them."""

    def __init__(self, tgi: bool, model: str, max_batch: int) -> None:
        self.tgi, self.model, self.max_batch = tgi, model, max_batch
        self.held = 0
        self.lock = threading.Lock()
        self.events = os.environ.get("STANDIN_EVENTS_FILE")

    def event(self, what: str) -> None:
        if self.events:
            with self.lock, open(self.events, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": what, "t": time.time()}) + "\n")

    def in_flight(self) -> int:
        extra = os.environ.get("STANDIN_IN_FLIGHT_FILE")
        more = int(Path(extra).read_text() or 0) if extra and Path(extra).exists() else 0
        return self.held + more

    def metrics(self) -> str:
        n = self.in_flight()
        running, waiting = min(n, self.max_batch), max(0, n - self.max_batch)
        if self.tgi:  # TGI's Rust exporter: no labels on its gauges
            return (
                "# TYPE tgi_request_count counter\ntgi_request_count 7\n"
                "# TYPE tgi_batch_current_max_tokens gauge\ntgi_batch_current_max_tokens 512\n"
                f"# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size {running}\n"
                f"# TYPE tgi_queue_size gauge\ntgi_queue_size {waiting}\n"
                '# TYPE tgi_request_duration histogram\ntgi_request_duration_bucket{le="0.5"} 3\n'
            )
        labels = f'engine="0",model_name="{self.model}"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}\n"
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            f"vllm:gpu_cache_usage_perc{{{labels}}} 0.25\n"
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} 12.0\n'
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 9.0\n'
        )

    def models(self) -> dict[str, object]:
        if self.tgi:
            card = {"id": self.model, "object": "model", "created": 0, "owned_by": self.model}
            return {"object": "list", "data": [card]}
        permission = {"id": "modelperm-0", "object": "model_permission", "created": 0, "allow_sampling": True}
        card = {"id": self.model, "object": "model", "created": 1_700_000_000, "owned_by": "vllm", "root": self.model}
        return {"object": "list", "data": [{**card, "parent": None, "max_model_len": 4096, "permission": [permission]}]}


def parse() -> tuple[argparse.Namespace, bool]:
    p = argparse.ArgumentParser()
    p.add_argument("--host", "--hostname", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-id", default="")
    p.add_argument("--model", default="")
    p.add_argument("--max-num-seqs", "--max-concurrent-requests", "--max-batch", type=int, default=256, dest="batch")
    args, rest = p.parse_known_args()
    positional = [a for a in rest if not a.startswith("-")]
    args.model = args.model_id or args.model or (positional[0] if positional else "m")
    return args, bool(args.model_id)


def main() -> None:
    args, tgi = parse()
    engine = Engine(tgi, args.model, args.batch)
    record = os.environ.get("STANDIN_ARGV_FILE")
    if record:
        Path(record).write_text(json.dumps({"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    fail_start = os.environ.get("STANDIN_FAIL_START")  # an engine that cannot load its model: says why, exits 1
    if fail_start:
        print("loading model ...", flush=True)
        print(fail_start, file=sys.stderr, flush=True)
        sys.exit(1)
    crash_after = float(os.environ.get("STANDIN_CRASH_AFTER_S", "0"))
    if crash_after:
        threading.Timer(crash_after, lambda: os._exit(3)).start()
    hold_s = float(os.environ.get("STANDIN_REQUEST_S", "0"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/health":
                if os.environ.get("STANDIN_UNHEALTHY"):
                    self._send(503, "application/json", b'{"error":"unhealthy"}')
                else:
                    self._send(200, "application/json", b"")
            elif self.path == "/v1/models":
                self._send(200, "application/json", json.dumps(engine.models()).encode())
            elif self.path == "/info" and engine.tgi:
                info = {"model_id": engine.model, "max_concurrent_requests": engine.max_batch, "version": "3.3.4"}
                self._send(200, "application/json", json.dumps(info).encode())
            elif self.path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", engine.metrics().encode())
            else:
                self._send(404, "application/json", b'{"error":"not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path in ("/v1/completions", "/v1/chat/completions"):
                with engine.lock:
                    engine.held += 1
                engine.event("request-start")
                try:
                    time.sleep(hold_s)
                finally:
                    with engine.lock:
                        engine.held -= 1
                body = {"id": "cmpl-0", "object": "text_completion", "model": engine.model, "choices": []}
                self._send(200, "application/json", json.dumps(body).encode())
                engine.event("request-end")
            else:
                self._send(404, "application/json", b'{"error":"not found"}')

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)  # daemon threads: SIGTERM cuts held requests
    if os.environ.get("STANDIN_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def on_sigterm(*_: object) -> None:
            engine.event("sigterm")
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGTERM, on_sigterm)
    server.serve_forever()


if __name__ == "__main__":
    main()
