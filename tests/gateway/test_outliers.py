"""Outlier detection through real servers: a request's fault is told from an instance's, ejections are
capped, a pool in panic routes to every instance, and the health probe brings ejected instances back."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from tests.gateway.conftest import Servers
from tests.support import wait_for
from wattgate.gateway.routing import Instance, InstanceSpec, choose
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.gateway.state import GatewayState
from wattgate.profiles.classes import RequestType

MSG = [{"role": "user", "content": "hi"}]
BODY = {"model": "fake-model", "messages": MSG, "max_tokens": 200}
POISON = {"model": "fake-model", "messages": [{"role": "user", "content": "poison pill"}], "max_tokens": 200}


@pytest.fixture(autouse=True)
def _quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="uvicorn.error")  # the fake engines' crashes are on purpose


def spec(url: str, id_: str) -> BackendSpec:
    return BackendSpec(url=url, id=id_, models=("fake-model",))


class Others:
    """Other clients sending ordinary requests the whole time, from a thread; every status is kept."""

    def __init__(self, gw: str) -> None:
        self.gw, self.statuses, self.stop = gw, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                self.statuses.append(client.post(self.gw + "/v1/chat/completions", json=BODY).status_code)

    def __enter__(self) -> Others:
        self.thread.start()
        wait_for(lambda: len(self.statuses) >= 3, "the other clients' first requests")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.mark.parametrize("poison_status", [0, 500], ids=["connection-dropped", "5xx"])
def test_three_requests_that_break_backends_leave_other_clients_served(servers: Servers, poison_status: int) -> None:
    a, a_url = servers.backend(poison="poison pill", poison_status=poison_status)
    b, b_url = servers.backend(poison="poison pill", poison_status=poison_status)
    gw, state = servers.gateway([spec(a_url, "a"), spec(b_url, "b")])
    with Others(gw) as others:
        for _ in range(3):
            resp = httpx.post(gw + "/v1/chat/completions", json=POISON)
            assert resp.status_code == (502 if poison_status == 0 else 500)
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}  # an OpenAI error body
        served_during = len(others.statuses)
        wait_for(lambda: len(others.statuses) >= served_during + 3, "more requests of the other clients")
    assert set(others.statuses) == {200}, others.statuses
    now = time.monotonic()
    assert all(i.routable(now) and i.consecutive_failures == 0 for i in state.instances.values())
    metrics = httpx.get(gw + "/metrics").text
    assert "wattgate_gateway_request_faults_total 3.0" in metrics
    assert "wattgate_gateway_ejections_total{" not in metrics
    for fake in (a, b):  # each poisoned request was tried on both (a dropped kept-alive connection is resent once)
        assert sum(d["messages"][0]["content"] == "poison pill" for d in fake.received) >= 3


def test_a_failure_another_instance_does_not_repeat_is_the_first_ones(servers: Servers) -> None:
    _, bad_url = servers.backend(status=500)
    _, good_url = servers.backend()
    gw, state = servers.gateway([spec(bad_url, "bad"), spec(good_url, "good")], eject_after_failures=1)
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert (resp.status_code, resp.headers["x-wattgate-instance"]) == (200, "good")
    assert not state.instances["bad"].routable(time.monotonic())  # blamed and ejected
    assert state.instances["good"].routable(time.monotonic())


def test_with_one_instance_poison_ejects_it_but_panic_keeps_serving_the_others(servers: Servers) -> None:
    _, url = servers.backend(poison="poison pill", poison_status=0)
    gw, state = servers.gateway([spec(url, "only")], health_interval_s=60)
    for _ in range(3):  # three failures in a row (a success between them would reset the count)
        assert httpx.post(gw + "/v1/chat/completions", json=POISON).status_code == 502
    assert state.instances["only"].ejected_until > time.monotonic()  # nobody to compare with: blamed
    with Others(gw) as others:
        pass
    assert set(others.statuses) == {200}, others.statuses
    assert 'wattgate_gateway_panic_routed_total{pool="SM"}' in httpx.get(gw + "/metrics").text


def test_the_health_probe_brings_an_ejected_instance_back(servers: Servers) -> None:
    _, url = servers.backend()
    _, state = servers.gateway([spec(url, "b0")], health_interval_s=0.05, eject_cooldown_s=600)
    state.note_failure(state.instances["b0"], connect_error=True)
    assert state.instances["b0"].ejected_until > time.monotonic()
    wait_for(lambda: state.instances["b0"].routable(time.monotonic()), "the probe to end the ejection")


def test_ejections_are_capped_at_a_share_of_the_pool() -> None:
    backends = tuple(BackendSpec(url=f"http://127.0.0.1:{9 + n}", id=f"i{n}", models=("m",)) for n in range(4))
    state = GatewayState.build(GatewaySettings(backends=backends, max_ejection_percent=50))
    now = time.monotonic()
    for inst in state.instances.values():
        state.note_failure(inst, connect_error=True)
    ejected = [i.id for i in state.instances.values() if i.ejected_until > now]
    assert ejected == ["i0", "i1"]  # 2 of 4: 50 %
    default = GatewayState.build(GatewaySettings(backends=backends))  # 10 %: still the first one may go
    for inst in default.instances.values():
        default.note_failure(inst, connect_error=True)
    assert [i.id for i in default.instances.values() if i.ejected_until > now] == ["i0"]
    assert 'wattgate_gateway_ejections_capped_total{instance="i3"} 1.0' in default.metrics.render().decode()


def _inst(id_: str, pool: str | None, *, healthy: bool = True, conc: int = 4) -> Instance:
    i = Instance(InstanceSpec(id_, "http://x", frozenset({"m"}), pool, conc, None, "static"))
    i.healthy = healthy
    return i


def test_panic_offers_a_pools_unroutable_instances_only_when_nothing_routable_can_take_it() -> None:
    rtype = RequestType.parse("SM")
    up, down1, down2 = _inst("up", "SM"), _inst("down1", "SM", healthy=False), _inst("down2", "SM", healthy=False)
    assert choose([up, down1, down2], "m", rtype, 0.0, panic_below=0.5) == (up, "SM")  # a routable one first
    up.in_flight = 4  # full
    assert choose([up, down1, down2], "m", rtype, 0.0) is None  # no panic mode
    assert choose([up, down1, down2], "m", rtype, 0.0, panic_below=0.5) == (down1, "SM")  # 1 of 3 routable: panic
    half = [up, down1]  # 1 of 2 routable: 50 %, not below the threshold
    assert choose(half, "m", rtype, 0.0, panic_below=0.5) is None
    spill = _inst("sl", "SL")  # a routable instance of a longer pool is preferred to panic
    assert choose([up, down1, down2, spill], "m", rtype, 0.0, panic_below=0.5) == (spill, "SL")
