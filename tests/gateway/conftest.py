"""Gateway fixtures: fake OpenAI backends and the gateway itself, each a real uvicorn server on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.gateway.fake_backend import FakeBackend, Knobs
from tests.support import UvicornThread
from wattgate.gateway.app import create_app
from wattgate.gateway.frontdoor import server_options
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.gateway.state import GatewayState


class Servers:
    """Starts fake backends and gateways; stops them all at the end of the test."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack

    def backend(self, model: str = "fake-model", keep_alive_s: float = 5, **knobs: Any) -> tuple[FakeBackend, str]:
        fake = FakeBackend(model=model, knobs=Knobs(**knobs))
        srv = self.stack.enter_context(UvicornThread(fake, timeout_keep_alive=keep_alive_s))
        return fake, srv.url

    def gateway(self, backends: list[BackendSpec] | list[str], **settings: Any) -> tuple[str, GatewayState]:
        specs = [
            b if isinstance(b, BackendSpec) else BackendSpec(url=b, id=f"b{n}", models=("fake-model",))
            for n, b in enumerate(backends)
        ]
        app = create_app(GatewaySettings(backends=tuple(specs), **settings))
        srv = self.stack.enter_context(UvicornThread(app, **server_options(app.front_door)))
        return srv.url, app.state.gateway


@pytest.fixture
def servers() -> Iterator[Servers]:
    with ExitStack() as stack:
        yield Servers(stack)


@pytest.fixture
def one(servers: Servers) -> tuple[str, FakeBackend, GatewayState]:
    """A gateway in front of one fast fake backend serving ``fake-model``."""
    fake, url = servers.backend()
    gw, state = servers.gateway([url])
    return gw, fake, state


Factory = Callable[..., Any]
