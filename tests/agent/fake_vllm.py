"""A fake ``vllm serve`` for agent tests: vLLM's command line, its OpenAI endpoints (streamed or not), ``/health``,
``/v1/models``, ``/metrics`` with vLLM's names, and sleep mode the way vLLM does it.

Sleep mode, as vLLM (``vllm/entrypoints/serve/sleep/api_router.py``, ``vllm/v1/engine/async_llm.py``):
the endpoints exist only with ``VLLM_SERVER_DEV_MODE=1`` (404 otherwise); ``POST /sleep?level=1|2&mode=``
answers 200 with an empty body, ``mode`` ``abort`` (the default) aborts the requests that run (their
streams end with ``finish_reason: "abort"``), ``wait`` waits for them, ``keep`` freezes them until the
wake-up; sleeping without ``--enable-sleep-mode`` is an error in the engine (500); ``POST /wake_up``
(``?tags=weights&tags=kv_cache``, none: all) answers 200 with an empty body; ``GET /is_sleeping`` answers
``{"is_sleeping": bool}``; ``/health`` stays 200 while asleep; a request that arrives while the engine
sleeps waits (counted in ``vllm:num_requests_waiting``) until it wakes; ``vllm:engine_sleep_state``
has the labels ``awake``, ``weights_offloaded`` and ``discard_all``.

Knobs (environment): ``FAKE_VLLM_TOKEN_S`` seconds per output token (0.01), ``FAKE_VLLM_SLEEP_S`` and
``FAKE_VLLM_WAKE_S`` how long falling asleep and waking take (0.05), ``FAKE_VLLM_WAKE_FAIL`` (set: every
wake-up answers 500 and the engine stays asleep), ``FAKE_VLLM_SLEEP_FAIL`` (set: every sleep answers 500
and the engine stays awake), ``FAKE_VLLM_ANSWER_EARLY`` (set: ``/sleep`` and ``/wake_up`` answer before the
engine has done it, as vLLM warns it may), ``FAKE_VLLM_EVENTS`` a file that gets one JSON line per
sleep, wake-up and finished request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STATES = ("awake", "weights_offloaded", "discard_all")  # vllm:engine_sleep_state's sleep_state, by level
TAGS = frozenset({"weights", "kv_cache"})


class Engine:
    """The engine's state: sleep level, requests running and waiting, counters. Every field under ``cond``."""

    def __init__(self, model: str, sleep_mode: bool, events: str | None) -> None:
        self.model = model
        self.sleep_mode = sleep_mode
        self.cond = threading.Condition()
        self.level = 0  # 0 awake, 1 weights offloaded, 2 discarded
        self.asleep_tags: set[str] = set()
        self.frozen = False  # mode=keep: running requests wait for the wake-up
        self.running = 0
        self.waiting = 0
        self.abort_epoch = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.token_s = float(os.environ.get("FAKE_VLLM_TOKEN_S", "0.01"))
        self.sleep_s = float(os.environ.get("FAKE_VLLM_SLEEP_S", "0.05"))
        self.wake_s = float(os.environ.get("FAKE_VLLM_WAKE_S", "0.05"))
        self.wake_fail = bool(os.environ.get("FAKE_VLLM_WAKE_FAIL"))
        self._events = events
        self._events_lock = threading.Lock()

    def event(self, **fields: Any) -> None:
        if self._events:
            with self._events_lock, Path(self._events).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"t": time.time(), **fields}) + "\n")

    def sleep(self, level: int, mode: str) -> None:
        with self.cond:
            if self.level:  # vLLM: already sleeping, nothing to do
                return
            aborted = self.running if mode == "abort" else 0
            if mode == "abort":
                self.abort_epoch += 1
            elif mode == "wait":
                self.cond.wait_for(lambda: self.running == 0)
            self.frozen = mode == "keep"
        time.sleep(self.sleep_s)
        with self.cond:
            self.level, self.asleep_tags = level, set(TAGS)
            self.cond.notify_all()
        self.event(event="sleep", level=level, mode=mode, aborted=aborted)

    def wake(self, tags: set[str]) -> bool:
        if self.wake_fail:
            self.event(event="wake", tags=sorted(tags), ok=False)
            return False
        time.sleep(self.wake_s)
        with self.cond:
            self.asleep_tags -= tags
            if not self.asleep_tags:
                self.level, self.frozen = 0, False
            self.cond.notify_all()
        self.event(event="wake", tags=sorted(tags), ok=True)
        return True

    def metrics(self) -> str:
        with self.cond:
            labels = f'engine="0",model_name="{self.model}"'
            lines = [
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{labels}}} {float(self.running)}",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{labels}}} {0.01 * self.running}",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)}",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}",
                "# TYPE vllm:request_success_total counter",
                *(
                    f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(n)}'
                    for reason, n in sorted(self.finished.items())
                ),
            ]
            if self.sleep_mode:
                lines.append("# TYPE vllm:engine_sleep_state gauge")
                lines += [
                    f'vllm:engine_sleep_state{{{labels},sleep_state="{s}"}} {1.0 if i == self.level else 0.0}'
                    for i, s in enumerate(STATES)
                ]
        return "\n".join(lines) + "\n"

    def admit(self) -> bool:
        """Wait while the engine sleeps (a paused scheduler), then run. Returns whether it arrived asleep."""
        with self.cond:
            arrived_asleep = self.level > 0
            self.waiting += 1
            self.cond.wait_for(lambda: self.level == 0)
            self.waiting -= 1
            self.running += 1
            return arrived_asleep

    def step(self, epoch: int) -> bool:
        """One output token's time; False once the request was aborted by a sleep."""
        time.sleep(self.token_s)
        with self.cond:
            self.cond.wait_for(lambda: not self.frozen or self.abort_epoch != epoch)
            if self.abort_epoch != epoch:
                return False
            self.generation_tokens += 1
            return True

    def finish(self, prompt_tokens: int, reason: str) -> None:
        with self.cond:
            self.running -= 1
            self.prompt_tokens += prompt_tokens
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.cond.notify_all()


def make_handler(engine: Engine, dev_mode: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                self._send(200, b"", "application/json")
            elif path == "/v1/models":
                card = {"id": engine.model, "object": "model", "created": int(time.time()), "owned_by": "vllm"}
                perm = {"id": "modelperm-0", "object": "model_permission", "created": 0, "allow_sampling": True}
                card |= {"root": engine.model, "parent": None, "max_model_len": 4096, "permission": [perm]}
                self._json(200, {"object": "list", "data": [card]})
            elif path == "/metrics":
                self._send(200, engine.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/is_sleeping" and dev_mode:
                with engine.cond:
                    asleep = engine.level > 0
                self._json(200, {"is_sleeping": asleep})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path == "/sleep" and dev_mode:
                if not engine.sleep_mode or os.environ.get("FAKE_VLLM_SLEEP_FAIL"):  # raised in the engine: a plain 500
                    self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")
                    return
                args = (int(query.get("level", ["1"])[0]), query.get("mode", ["abort"])[0])
                if os.environ.get("FAKE_VLLM_ANSWER_EARLY"):
                    threading.Thread(target=engine.sleep, args=args).start()
                else:
                    engine.sleep(*args)
                self._send(200, b"", "application/json")
            elif url.path == "/wake_up" and dev_mode:
                tags = set(query.get("tags", [])) or set(TAGS)
                if os.environ.get("FAKE_VLLM_ANSWER_EARLY") and not engine.wake_fail:
                    threading.Thread(target=engine.wake, args=(tags,)).start()
                    ok = True
                else:
                    ok = engine.wake(tags)
                self._send(200 if ok else 500, b"" if ok else b"Internal Server Error", "text/plain; charset=utf-8")
            elif url.path in ("/v1/completions", "/v1/chat/completions"):
                self._generate(url.path, body)
            else:
                self._json(404, {"detail": "Not Found"})

        def _generate(self, path: str, raw: bytes) -> None:
            try:
                req = json.loads(raw)
            except ValueError:
                self._json(400, {"error": {"message": "invalid JSON", "type": "BadRequestError", "code": 400}})
                return
            if req.get("model") != engine.model:
                msg = f"The model `{req.get('model')}` does not exist."
                self._json(404, {"error": {"message": msg, "type": "NotFoundError", "param": None, "code": 404}})
                return
            chat = path.endswith("chat/completions")
            text = json.dumps(req.get("messages") if chat else req.get("prompt", ""))
            prompt_tokens, max_tokens = max(1, len(text.split())), int(req.get("max_tokens") or 16)
            arrived_asleep = engine.admit()
            with engine.cond:
                epoch = engine.abort_epoch
            stream = bool(req.get("stream"))
            out = _Output(
                self, chat, engine.model, stream, bool((req.get("stream_options") or {}).get("include_usage"))
            )
            n, reason = 0, "length"
            try:
                out.start()
                while n < max_tokens:
                    if not engine.step(epoch):
                        reason = "abort"
                        break
                    n += 1
                    out.token(f"tok{n} ")
                out.end(reason, prompt_tokens, n)
            except OSError:  # the client went away
                reason = "abort"
            finally:
                engine.finish(prompt_tokens, reason)
                engine.event(event="request", path=path, arrived_asleep=arrived_asleep, finish_reason=reason, tokens=n)

        def _json(self, code: int, doc: Any) -> None:
            self._send(code, json.dumps(doc).encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    return Handler


class _Output:
    """One response, whole (at the end) or streamed as Server-Sent Events in chunked encoding."""

    def __init__(self, h: BaseHTTPRequestHandler, chat: bool, model: str, stream: bool, usage: bool) -> None:
        self.h, self.chat, self.model, self.stream, self.usage = h, chat, model, stream, usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text: list[str] = []

    def _choice(self, text: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
        doc: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model, "choices": choices}
        doc["object"] = "chat.completion.chunk" if self.chat else "text_completion"
        if usage is not None:
            doc["usage"] = usage
        self._write(b"data: " + json.dumps(doc).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.h.wfile.flush()

    def start(self) -> None:
        if not self.stream:
            return
        self.h.send_response(200)
        self.h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.h.send_header("Transfer-Encoding", "chunked")
        self.h.end_headers()
        if self.chat:
            self._chunk([self._choice(None, None, role=True)])

    def token(self, text: str) -> None:
        if self.stream:
            self._chunk([self._choice(text, None)])
        else:
            self.text.append(text)

    def end(self, reason: str, prompt_tokens: int, n: int) -> None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        if self.stream:
            self._chunk([self._choice("" if not self.chat else None, reason)])
            if self.usage:
                self._chunk([], usage)
            self._write(b"data: [DONE]\n\n")
            self._write(b"")  # the last chunk
            return
        text = "".join(self.text)
        if self.chat:
            msg = {"role": "assistant", "content": text}
            choice: dict[str, Any] = {"index": 0, "message": msg, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        doc = {"id": self.id, "object": "chat.completion" if self.chat else "text_completion"}
        doc |= {"created": self.created, "model": self.model, "choices": [choice], "usage": usage}
        body = json.dumps(doc).encode()
        self.h.send_response(200)
        self.h.send_header("Content-Type", "application/json")
        self.h.send_header("Content-Length", str(len(body)))
        self.h.end_headers()
        self.h.wfile.write(body)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--enable-sleep-mode", action="store_true")
    args, _ = p.parse_known_args()
    engine = Engine(args.model, args.enable_sleep_mode, os.environ.get("FAKE_VLLM_EVENTS"))
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(engine, os.environ.get("VLLM_SERVER_DEV_MODE") == "1")
    )
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
