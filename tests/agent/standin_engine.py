"""A stand-in engine for agent tests: accepts the launch flags of vLLM/TGI/sim-backend, serves
/health, /v1/models and vLLM-style /metrics; knobs to ignore SIGTERM, crash, fail to start, or hold requests."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", "--hostname", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args, _ = p.parse_known_args()
    in_flight_file = os.environ.get("STANDIN_IN_FLIGHT_FILE")
    if os.environ.get("STANDIN_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
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

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health" and os.environ.get("STANDIN_UNHEALTHY"):
                self._send(503, "application/json", b'{"ok": false}')
            elif self.path in ("/health", "/v1/models"):
                self._send(200, "application/json", b'{"ok": true}')
            elif self.path == "/metrics":
                n = 0
                if in_flight_file and Path(in_flight_file).exists():
                    n = int(Path(in_flight_file).read_text() or 0)
                body = f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="m"}} {n}.0\n'
                body += 'vllm:num_requests_waiting{model_name="m"} 0.0\n'
                self._send(200, "text/plain", body.encode())
            else:
                self._send(404, "text/plain", b"not found")

        def do_POST(self) -> None:
            if self.path.startswith(("/sleep", "/wake_up")):
                with Path(os.environ.get("STANDIN_SLEEP_LOG", os.devnull)).open("a") as f:
                    f.write(self.path + "\n")
                self._send(200, "application/json", b"{}")
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start()) if not os.environ.get(
        "STANDIN_IGNORE_SIGTERM"
    ) else None
    server.serve_forever()


if __name__ == "__main__":
    main()
