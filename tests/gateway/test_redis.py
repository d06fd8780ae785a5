"""The gateway with a real Redis: registry instances come and go, load windows and observations are recorded,
and serving survives Redis dying (buffered, drops counted, reconnect)."""

from __future__ import annotations

import asyncio
import time
import types

import httpx
import pytest
import redis

from tests.gateway.conftest import Servers
from tests.gateway.fake_backend import FakeBackend, Knobs
from tests.support import UvicornThread, wait_for
from wattgate.classifier.api import MaxTokensPredictor
from wattgate.embedded_redis import EmbeddedRedis, free_port
from wattgate.gateway import store as store_module
from wattgate.gateway.app import create_app
from wattgate.gateway.frontdoor import server_options
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.gateway.routing import expected_output_tokens
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.gateway.state import GatewayState
from wattgate.gateway.store import RedisStore, publish_instance
from wattgate.planner.contract import InstanceRecord, Keys, Observation
from wattgate.profiles.classes import ClassEdges

MSG = [{"role": "user", "content": "secret prompt text"}]
BODY = {"model": "fake-model", "messages": MSG, "max_tokens": 200}  # max_tokens 200: output S or M -> pool SM


def record(url: str, id_: str = "i1", state: str = "ready", pool: str = "SM") -> InstanceRecord:
    return InstanceRecord(id=id_, base_url=url, model="fake-model", pool=pool, node="n1", state=state)


def metric(gw: str, series: str) -> float:
    for line in httpx.get(gw + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def models(gw: str) -> list[str]:
    return [m["id"] for m in httpx.get(gw + "/v1/models").json()["data"]]


def test_registry_instances_appear_change_and_disappear_without_restart(servers: Servers, redis_url: str) -> None:
    _, url = servers.backend()
    gw, _ = servers.gateway([], redis_url=redis_url, registry_refresh_s=30)
    assert models(gw) == []
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 404
    asyncio.run(publish_instance(redis_url, Keys(), record(url)))
    wait_for(lambda: models(gw) == ["fake-model"])
    resp = httpx.post(gw + "/v1/chat/completions", json=BODY)
    assert resp.status_code == 200
    assert resp.headers["x-wattgate-instance"] == "i1"
    assert resp.headers["x-wattgate-pool"] == "SM"
    asyncio.run(publish_instance(redis_url, Keys(), record(url, state="draining")))
    wait_for(lambda: httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 503)
    client = redis.Redis.from_url(redis_url)
    client.hdel(Keys().instances, "i1")
    client.publish(Keys().instance_events, "i1")
    client.close()
    wait_for(lambda: models(gw) == [])
    assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 404
    assert 'instance="i1"' not in httpx.get(gw + "/metrics").text


def test_load_windows_and_observations_are_recorded(servers: Servers, redis_url: str) -> None:
    fake, url = servers.backend()
    gw, _ = servers.gateway([url], redis_url=redis_url, flush_interval_s=0.05)
    for stream in (False, False, True):
        with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": stream}) as resp:
            resp.read()
            assert resp.status_code == 200
    keys = Keys()
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.xlen(keys.observations) == 3)
    entries = client.xrange(keys.observations)
    docs = [entry[b"json"] for _, entry in entries]
    assert all(b"secret prompt" not in d for d in docs)
    obs = [Observation.from_json(d) for d in docs]
    assert {o.pool for o in obs} == {"SM"} and {o.predicted_type for o in obs} == {"SM"}
    assert {o.status for o in obs} == {200} and {o.model for o in obs} == {"fake-model"}
    assert {o.instance for o in obs} == {"b0"}
    assert [o.output_tokens for o in obs] == [3, 3, 3]  # true counts from the engine's usage
    assert [o.input_tokens for o in obs] == [7, 7, 7]
    assert obs[2].ttft_s is not None
    assert obs[2].tbt_s is not None
    assert obs[0].ttft_s is None  # not streamed: no first-token time to measure
    assert abs(sum(obs[0].output_probs) - 1) < 1e-9
    seconds = client.keys(f"{keys.prefix}:v1:load:s:*")
    minutes = client.keys(f"{keys.prefix}:v1:load:m:*")
    assert sum(int(client.hget(k, "SM:requests") or 0) for k in seconds) == 3
    assert sum(int(client.hget(k, "SM:requests") or 0) for k in minutes) == 3
    # each request's counts at routing time: its input tokens and its expected (modelled) output tokens
    pred = MaxTokensPredictor().predict(BODY, "chat")
    expected_out = expected_output_tokens(pred, ClassEdges(), 200)
    for keys_of in (seconds, minutes):
        assert sum(int(client.hget(k, "SM:input_tokens") or 0) for k in keys_of) == 3 * pred.input_tokens
        assert sum(int(client.hget(k, "SM:output_tokens") or 0) for k in keys_of) == 3 * expected_out
    assert 0 < client.ttl(seconds[0]) <= 7200
    client.close()
    assert fake.received[2]["stream_options"] == {"include_usage": True}


def test_serving_survives_redis_dying_and_reconnects(servers: Servers) -> None:
    server = EmbeddedRedis(password="s3cret").start()  # a password in the URL works too
    try:
        _, url = servers.backend()
        gw, state = servers.gateway(
            [], redis_url=server.url, flush_interval_s=0.05, record_buffer=4, redis_timeout_s=0.3
        )
        asyncio.run(publish_instance(server.url, Keys(), record(url)))
        wait_for(lambda: models(gw) == ["fake-model"])
        assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
        first = redis.Redis.from_url(server.url)
        wait_for(lambda: first.xlen(Keys().observations) == 1)
        first.close()
        server.stop()  # Redis dies mid-test
        for _ in range(10):  # the last instance list is kept; serving goes on
            assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
        wait_for(lambda: "wattgate_gateway_registry_stale 1.0" in httpx.get(gw + "/metrics").text)
        drops = 'wattgate_gateway_redis_dropped_total{kind="observation"}'
        # a buffer of 4 for 10 finished requests: the 4 newest wait (a failed flush puts its batch back, as room
        # allows), the other 6 are dropped and counted
        wait_for(lambda: metric(gw, drops) == 6)
        assert metric(gw, 'wattgate_gateway_redis_errors_total{op="flush"}') >= 1
        server = EmbeddedRedis(port=server.port, password="s3cret").start()  # it comes back, empty
        client = redis.Redis.from_url(server.url)
        # the 4 buffered ones arrive; with the 6 dropped, every one of the 10 is accounted for
        wait_for(lambda: client.xlen(Keys().observations) == 4)
        assert metric(gw, drops) == 6
        asyncio.run(publish_instance(server.url, Keys(), record(url)))
        wait_for(lambda: "wattgate_gateway_registry_stale 0.0" in httpx.get(gw + "/metrics").text)
        assert httpx.post(gw + "/v1/chat/completions", json=BODY).status_code == 200
        wait_for(lambda: client.xlen(Keys().observations) + metric(gw, drops) == 11)
        client.close()
        assert state.instances["i1"].in_flight == 0
    finally:
        server.stop()


def test_tls_redis_url_builds_a_tls_connection() -> None:
    store = RedisStore("rediss://:pw@127.0.0.1:6390/0", Keys(), GatewayMetrics(), 10)
    pool = store.client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["password"] == "pw"
    asyncio.run(store.close())


def test_instance_probed_while_starting_is_routable_once_registered_ready() -> None:
    """Regression: an agent registers an instance ``starting`` before its engine listens; a health probe
    then failed and kept it unroutable after the agent marked it ready (until the next probe, 5 s),
    so a plan change that drained the old instances at that moment answered 503."""
    state = GatewayState.build(GatewaySettings())
    dead = f"http://127.0.0.1:{free_port()}"  # the engine does not listen yet

    async def scenario() -> tuple[bool, bool]:
        state.apply_registry([record(dead, state="starting")])
        await state.probe_all()
        state.apply_registry([record(dead, state="ready")])  # the agent's own health wait passed
        routable_when_ready = state.instances["i1"].routable(time.monotonic())
        await state.probe_all()  # a ready instance that stops answering is still taken out
        still_probed = not state.instances["i1"].routable(time.monotonic())
        await state.client.aclose()
        return routable_when_ready, still_probed

    assert asyncio.run(scenario()) == (True, True)


def test_the_flusher_backs_off_up_to_2_s_and_resets_once_a_flush_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "reconnects with backoff (<= 2 s)". The waits between flush attempts, with Redis failing six
    times, answering once, failing again."""
    store = RedisStore("redis://127.0.0.1:1/0", Keys(), GatewayMetrics(), 10)
    outcomes = iter([False] * 6 + [True] + [False] * 5)
    waits: list[float] = []

    async def flush() -> bool:
        return next(outcomes)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 9:
            raise asyncio.CancelledError

    monkeypatch.setattr(store, "flush", flush)
    # the store's own asyncio only: patching asyncio.sleep itself would also catch the sleeps of any server
    # thread a test before left running (an emulator's 0.1 s GPU task under load), and count them here
    monkeypatch.setattr(store_module, "asyncio", types.SimpleNamespace(sleep=sleep))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(store.run_flusher(0.1))
    assert waits == [0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 0.1, 0.25]


def test_load_is_recorded_while_the_request_is_still_running(servers: Servers, redis_url: str) -> None:
    """The load window counts a request when it is routed, not when it ends: a long stream shows in Redis
    before its observation exists (the flush sends load alone)."""
    _, url = servers.backend(stall_after_first=30)
    gw, state = servers.gateway([url], redis_url=redis_url, flush_interval_s=0.05)
    client = redis.Redis.from_url(redis_url)
    with httpx.stream("POST", gw + "/v1/chat/completions", json={**BODY, "stream": True}) as held:
        chunks = held.iter_raw()  # keep the iterator: dropping it closes the stream
        next(chunks)
        wait_for(lambda: sum(int(client.hget(k, "SM:requests") or 0) for k in client.keys("wg:v1:load:s:*")) == 1)
        assert client.xlen(Keys().observations) == 0
    client.close()
    wait_for(lambda: state.instances["b0"].in_flight == 0)


def test_shutdown_while_a_flush_waits_on_redis_keeps_its_batch(redis_url: str) -> None:
    # The flusher holds a batch while Redis is slow; stopping the gateway then must not drop it (cancelling
    # the flusher mid-flush did): the flusher is told to stop, finishes that flush, and flushes once more.
    fake = FakeBackend(model="fake-model", knobs=Knobs())
    admin = redis.Redis.from_url(redis_url)
    with UvicornThread(fake) as backend:
        spec = BackendSpec(url=backend.url, id="b0", models=("fake-model",))
        app = create_app(GatewaySettings(backends=(spec,), redis_url=redis_url, flush_interval_s=0.05))
        with UvicornThread(app, **server_options(app.front_door)) as gw:
            state = app.state.gateway
            admin.execute_command("CLIENT", "PAUSE", "700", "WRITE")  # Redis holds writes for 0.7 s
            resp = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10)
            assert resp.status_code == 200
            assert state.store is not None
            wait_for(lambda: state.store.pending == 0, "the flusher holding the batch", 5)
        # the gateway has stopped; what it held is in Redis
    keys = Keys()
    assert admin.xlen(keys.observations) == 1
    seconds = admin.keys(f"{keys.prefix}:v1:load:s:*")
    assert sum(int(admin.hget(k, "SM:requests") or 0) for k in seconds) == 1
    admin.close()
