"""Test helpers: run an ASGI app under a real uvicorn server on loopback, in a background thread; wait
for a port or a condition."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import uvicorn

from wattgate.embedded_redis import free_port


class UvicornThread:
    """``with UvicornThread(app) as srv: srv.url`` serves ``app`` on 127.0.0.1 until the block ends."""

    def __init__(self, app: Any, port: int | None = None, **config: Any) -> None:
        self.port = port or free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def wait_for(cond: Callable[[], Any], what: str = "the condition", timeout_s: float = 30.0) -> Any:
    """Poll ``cond`` until it returns something truthy and return that; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# The project's shared folder sits next to the checkout (``../shared``); the measurements some tests read live
# in its data/. Without it those tests skip with this one reason, and tests/conftest.py counts them in a line
# at the end of the run, so a missing folder is seen, not silently passed over.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SKIP = f"../shared/data is not next to this checkout (looked for {SHARED_DATA})"


def needs_shared(*parts: str) -> pytest.MarkDecorator:
    """Skip (counted, with ``SHARED_SKIP``) unless ``../shared/data/<parts>`` exists."""
    return pytest.mark.skipif(not SHARED_DATA.joinpath(*parts).exists(), reason=SHARED_SKIP)
