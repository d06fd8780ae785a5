"""Static backends without a ``model`` hint: the gateway asks each for its models, and asks again on every
health probe until it knows them (a backend that was down at start-up is served once it comes up)."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import Servers
from tests.gateway.fake_backend import FakeBackend
from tests.support import UvicornThread, wait_for
from wattgate.embedded_redis import free_port
from wattgate.gateway.settings import BackendSpec

BODY = {"model": "late-model", "messages": [{"role": "user", "content": "hi"}]}


def test_a_backend_down_at_start_up_is_asked_for_its_models_again(servers: Servers) -> None:
    port = free_port()
    spec = BackendSpec(url=f"http://127.0.0.1:{port}", id="late", models=())  # models unknown: asked
    gw, state = servers.gateway([spec], health_interval_s=0.05)
    assert httpx.get(gw + "/v1/models").json()["data"] == []
    down = httpx.post(gw + "/v1/chat/completions", json=BODY)  # a backend that is down is not a wrong model name
    assert down.status_code == 503 and "retry-after" in down.headers, down.text
    fake = FakeBackend(model="late-model")
    with UvicornThread(fake, port=port):
        wait_for(
            lambda: state.instances["late"].spec.models == frozenset({"late-model"}), "models discovered", timeout_s=10
        )
        assert [m["id"] for m in httpx.get(gw + "/v1/models").json()["data"]] == ["late-model"]
        wait_for(lambda: state.instances["late"].healthy, "healthy after its probe")
        resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
        assert resp.status_code == 200 and resp.headers["x-wattgate-instance"] == "late"
        assert len(fake.received) == 1
