"""Routing and failures through real servers: retries, ejection, probing, spill, capacity, disconnects, no buffering."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import openai

from tests.gateway.conftest import Servers
from tests.support import wait_for
from wattgate.embedded_redis import free_port
from wattgate.gateway.settings import BackendSpec

MSG = [{"role": "user", "content": "hi"}]
BODY = {"model": "fake-model", "messages": MSG, "max_tokens": 200}  # max_tokens 200: output S or M -> pool SM


def metric(gw: str, series: str) -> float:
    """The value of one exported series (0 when absent: counters with labels appear on first use)."""
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def spec(url: str, id_: str, pool: str | None = None, conc: int = 256) -> BackendSpec:
    return BackendSpec(url=url, id=id_, models=("fake-model",), pool=pool, max_concurrency=conc)


def test_5xx_before_first_byte_is_retried_once_on_another_instance(servers: Servers) -> None:
    bad, bad_url = servers.backend(status=500)
    good, good_url = servers.backend()
    # the bad one is chosen first: it carries less outstanding work (none) and comes first on ties
    gw, state = servers.gateway([spec(bad_url, "bad"), spec(good_url, "good")])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 200
    assert resp.headers["x-wattgate-instance"] == "good"
    assert len(bad.received) == 1
    assert len(good.received) == 1
    for inst in state.instances.values():  # the failed try gave its work back: nothing left counted anywhere
        assert (inst.in_flight, inst.outstanding_tokens) == (0, 0), inst
    assert "wattgate_gateway_retries_total 1.0" in httpx.get(gw + "/metrics").text


def test_two_5xx_go_to_the_client_as_the_backend_said(servers: Servers) -> None:
    a, a_url = servers.backend(status=503)
    b, b_url = servers.backend(status=500)
    gw, state = servers.gateway([spec(a_url, "a"), spec(b_url, "b")])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 500
    assert len(a.received) + len(b.received) == 2  # exactly one retry
    wait_for(lambda: all((i.in_flight, i.outstanding_tokens) == (0, 0) for i in state.instances.values()))


def test_connect_error_retries_and_ejects_the_dead_instance(servers: Servers) -> None:
    _good, good_url = servers.backend()
    dead_url = f"http://127.0.0.1:{free_port()}"
    gw, state = servers.gateway([spec(dead_url, "dead"), spec(good_url, "good")], health_interval_s=60)
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 200
    assert resp.headers["x-wattgate-instance"] == "good"
    assert not state.instances["dead"].routable(time.monotonic())
    # the dead one was probed at start-up too: mark it healthy and check the passive ejection alone keeps it out
    state.instances["dead"].healthy = True
    for _ in range(3):
        assert httpx.post(gw + "/v1/chat/completions", json=BODY).headers["x-wattgate-instance"] == "good"
    # ejected once (by the first request that reached it, before or after the start-up probe), then skipped
    assert metric(gw, 'wattgate_gateway_ejections_total{instance="dead"}') == 1.0


def test_passive_ejection_after_repeated_5xx_and_cooldown(servers: Servers) -> None:
    bad, bad_url = servers.backend(status=500)
    gw, state = servers.gateway(
        [spec(bad_url, "bad")], eject_after_failures=2, eject_cooldown_s=0.5, panic_threshold_percent=0
    )  # no panic mode: ejection alone
    httpx.post(gw + "/v1/chat/completions", json=BODY)  # one failure (the retry finds no other instance)
    assert state.instances["bad"].routable(time.monotonic())
    httpx.post(gw + "/v1/chat/completions", json=BODY)
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert metric(gw, 'wattgate_gateway_ejections_total{instance="bad"}') == 1.0  # after the 2nd 5xx, once
    assert metric(gw, 'wattgate_gateway_no_capacity_total{pool="SM"}') == 1.0
    bad.knobs.status = 200
    wait_for(lambda: state.instances["bad"].routable(time.monotonic()))
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200


def test_active_health_probe_takes_an_instance_out_and_back(servers: Servers) -> None:
    fake, url = servers.backend()
    gw, state = servers.gateway([spec(url, "b0")], health_interval_s=0.05, panic_threshold_percent=0)
    fake.knobs.health_status = 503
    wait_for(lambda: not state.instances["b0"].healthy)
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 503
    assert httpx.get(gw + "/ready").status_code == 503
    fake.knobs.health_status = 200
    wait_for(lambda: state.instances["b0"].healthy)
    assert httpx.get(gw + "/ready").status_code == 200


def test_spill_to_the_next_longer_pool(servers: Servers) -> None:
    _, sm_url = servers.backend()
    gw, _ = servers.gateway([spec(sm_url, "sm-1", pool="SM")])
    resp = httpx.post(gw + "/v1/chat/completions", json={**BODY, "max_tokens": 10})  # an SS request
    assert resp.status_code == 200
    assert resp.headers["x-wattgate-pool"] == "SM"
    assert resp.headers["x-wattgate-instance"] == "sm-1"


def test_never_spills_to_a_shorter_pool(servers: Servers) -> None:
    _, ss_url = servers.backend()
    gw, _ = servers.gateway([spec(ss_url, "ss-1", pool="SS")])
    resp = httpx.post(gw + "/v1/chat/completions", json={**BODY, "max_tokens": 2000})  # an SL request
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "no_capacity"
    assert metric(gw, 'wattgate_gateway_no_capacity_total{pool="SL"}') == 1.0
    assert metric(gw, 'wattgate_gateway_ejections_total{instance="ss-1"}') == 0.0  # nobody failed


def test_concurrency_bound_then_503_and_least_outstanding_work(servers: Servers) -> None:
    _slow, slow_url = servers.backend(stall_after_first=30)
    gw, state = servers.gateway([spec(slow_url, "slow", conc=1)])
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as held:
        chunks = held.iter_raw()  # keep the iterator: dropping it closes the stream
        next(chunks)
        resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
        assert resp.status_code == 503
        assert "retry-after" in resp.headers
    wait_for(lambda: state.instances["slow"].in_flight == 0)


def test_least_outstanding_tokens_wins(servers: Servers) -> None:
    _a, a_url = servers.backend(stall_after_first=30)
    _b, b_url = servers.backend()
    gw, state = servers.gateway([spec(a_url, "a"), spec(b_url, "b")])
    state.instances["b"].in_flight = 1  # b has one more request in flight, but a short one
    state.instances["b"].outstanding_tokens = 50
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True, "max_tokens": 4000}) as held:
        assert held.headers["x-wattgate-instance"] == "a"  # a had no work at all
        chunks = held.iter_raw()
        next(chunks)
        assert state.instances["a"].outstanding_tokens > 50
        resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
        assert resp.headers["x-wattgate-instance"] == "b"  # fewer tokens in flight, though more requests
    state.instances["b"].in_flight = 0
    state.instances["b"].outstanding_tokens = 0


def test_first_byte_reaches_the_client_before_the_backend_finishes(servers: Servers) -> None:
    fake, url = servers.backend(tokens=5, stall_after_first=30)
    gw, _ = servers.gateway([url])
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as resp:
        assert resp.headers["x-accel-buffering"] == "no"
        chunks = resp.iter_raw()
        first = next(chunks)
        assert b"t0" in first
        assert fake.completed == 0  # the backend is still stalled after its first token
        assert fake.in_flight == 1


def test_client_disconnect_cancels_the_upstream_request(servers: Servers) -> None:
    fake, url = servers.backend(tokens=5, stall_after_first=30)
    gw, state = servers.gateway([url])
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as resp:
        next(resp.iter_raw())
    wait_for(lambda: fake.cancelled == 1)
    wait_for(lambda: state.instances["b0"].in_flight == 0)
    assert fake.completed == 0
    # counted as the client's own departure (499), not as a gateway failure
    wait_for(lambda: metric(gw, 'wattgate_gateway_requests_total{endpoint="chat",pool="SM",status="499"}') == 1.0)
    assert metric(gw, 'wattgate_gateway_requests_total{endpoint="chat",pool="SM",status="500"}') == 0.0


def test_non_streaming_disconnect_cancels_too(servers: Servers) -> None:
    fake, url = servers.backend(ttft_s=30)
    gw, state = servers.gateway([url])

    def call() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(gw + "/v1/chat/completions", json=BODY, timeout=0.5)

    t = threading.Thread(target=call)
    t.start()
    t.join()
    wait_for(lambda: fake.cancelled == 1)
    wait_for(lambda: state.instances["b0"].in_flight == 0)


def test_metrics_export_the_series(one: tuple[str, object, object]) -> None:
    gw = one[0]
    c = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0)
    list(c.chat.completions.create(model="fake-model", messages=MSG, stream=True, max_tokens=200))  # type: ignore[arg-type]
    text = httpx.get(gw + "/metrics").text
    assert 'wattgate_gateway_requests_total{endpoint="chat",pool="SM",status="200"} 1.0' in text
    assert 'wattgate_gateway_ttft_seconds_count{pool="SM"} 1.0' in text
    assert 'wattgate_gateway_tbt_seconds_count{pool="SM"} 1.0' in text
    assert "wattgate_gateway_overhead_seconds_count 1.0" in text
    assert 'wattgate_gateway_in_flight{instance="b0"} 0.0' in text
