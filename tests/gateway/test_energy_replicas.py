"""Several gateway replicas in front of one instance: each interval's energy is split over all replicas' requests
through Redis, the idle seconds are booked once, so what both replicas book adds up to the counter (not twice
it); while Redis is away a replica splits over its own requests and says so."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import redis

from tests.gateway.conftest import Servers
from tests.gateway.test_energy_usage import samples
from tests.support import wait_for
from wattgate.carbon import constant, parse_carbon
from wattgate.embedded_redis import EmbeddedRedis
from wattgate.gateway.energy import Booking, Work
from wattgate.gateway.energy_meter import EnergyMeter
from wattgate.gateway.energy_report import aggregate, to_table
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.gateway.state import GatewayState
from wattgate.gateway.store import RedisStore, publish_instance, read_energy_minutes
from wattgate.planner.contract import IDLE_KEY, InstanceEnergy, InstanceRecord, Keys

KEYS = Keys()
POWER_W = 1000.0


class Agent:
    """Instance ``i1``'s energy counter at 1000 W (modelled), one reading every 0.1 s once ``go`` is set."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.t0 = time.time()
        self.last = self.t0
        self.go = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.write(self.t0)

    def write(self, ts: float) -> None:
        msg = InstanceEnergy("i1", "n1", ts, POWER_W * (ts - self.t0), POWER_W, "modelled", [0])
        self.r.hset(KEYS.energy, "i1", msg.to_json())
        self.last = ts

    def _run(self) -> None:
        self.go.wait()
        while not self.stop.wait(0.1):
            self.write(time.time())


@pytest.fixture
def agent(redis_url: str) -> Iterator[Agent]:
    a = Agent(redis_url)
    a.thread.start()
    yield a
    a.go.set()
    a.stop.set()
    a.thread.join()
    a.r.close()


def booked(gw: str) -> tuple[float, float, float]:
    """Joules booked to requests, to idle, and requests booked, from one scrape of one replica."""
    joules, requests = samples(gw, "wattgate_gateway_energy_joules_total", "wattgate_gateway_energy_requests_total")
    assert {s["source"] for s, _ in joules} <= {"modelled"}
    idle = sum(v for s, v in joules if s["key"] == IDLE_KEY)
    return sum(v for _, v in joules) - idle, idle, sum(v for _, v in requests)


def test_two_replicas_book_a_shared_instance_once(
    servers: Servers, redis_url: str, agent: Agent, tmp_path: Path
) -> None:
    _, url = servers.backend(tokens=8, tbt_s=0.04, ttft_s=0.05)
    carbon = tmp_path / "carbon.csv"  # an intensity per UTC hour of the day: 100, 110, ..., 330 g/kWh
    carbon.write_text("# gCO2e/kWh, 00:00 UTC first\n" + "\n".join(str(100 + 10 * h) for h in range(24)) + "\n")
    series = parse_carbon(str(carbon))
    gateways = [
        servers.gateway([], redis_url=redis_url, energy_interval_s=0.1, energy_carbon_g_per_kwh=str(carbon))
        for _ in range(2)
    ]
    asyncio.run(publish_instance(redis_url, KEYS, InstanceRecord("i1", url, "fake-model", "SM", "n1", "ready")))
    meters = [state.energy for _, state in gateways]
    assert all(m is not None for m in meters)

    def at_first_reading(state: GatewayState) -> bool:
        m = state.energy
        return m is not None and "i1" in m.ledgers and m.ledgers["i1"].settled_until == agent.t0

    wait_for(lambda: all(at_first_reading(s) for _, s in gateways), "both replicas to read the first reading")
    agent.go.set()
    clients = [
        openai.OpenAI(base_url=gw + "/v1", api_key=f"key-{n}", max_retries=0) for n, (gw, _) in enumerate(gateways)
    ]

    def one(n: int) -> dict[str, object]:
        client = clients[n % 2]
        msgs = [{"role": "user", "content": "energy " * (1 + n % 7)}]
        if n % 3:
            chunks = list(
                client.chat.completions.create(
                    model="fake-model", messages=msgs, max_tokens=50, stream=True,  # type: ignore[arg-type]
                    stream_options={"include_usage": True},
                )
            )  # fmt: skip
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model="fake-model", messages=msgs, max_tokens=50).usage  # type: ignore[arg-type]
        assert usage is not None and usage.model_extra is not None
        return dict(usage.model_extra["energy"])

    time.sleep(1.0)  # an idle second first
    with ThreadPoolExecutor(6) as pool:
        energies = list(pool.map(one, range(24)))
    assert all(e["split"] == "all replicas" and e["source"] == "modelled" for e in energies)
    time.sleep(2.5)  # idle seconds after the last request (its last second must close)
    agent.stop.set()
    agent.thread.join()
    end = agent.last

    def at_rest() -> bool:
        return all(s.energy is not None and s.energy.ledgers["i1"].settled_until == end for _, s in gateways) and (
            sum(booked(gw)[2] for gw, _ in gateways) == 24
        )

    wait_for(at_rest, "both replicas to settle up to the last reading", timeout_s=20)
    (req_a, idle_a, n_a), (req_b, idle_b, n_b) = (booked(gw) for gw, _ in gateways)
    counted = POWER_W * (end - agent.t0)
    total = req_a + idle_a + req_b + idle_b
    assert total == pytest.approx(counted, rel=0.02), (total, counted, req_a, idle_a, req_b, idle_b)
    assert n_a == n_b == 12 and req_a > 0 and req_b > 0  # each replica booked its own requests' share
    assert idle_a + idle_b > 0  # the idle seconds, booked once between them
    assert all(b.ledgers["i1"].shared and not b.local for b in meters if b is not None)
    local = [samples(gw, "wattgate_gateway_energy_local_split_joules_total")[0] for gw, _ in gateways]
    assert local == [[], []]
    # carbon from the series: the run's energy at the intensity of its hour (two, if it crossed one)
    grams = sum(v for gw, _ in gateways for _, v in samples(gw, "wattgate_gateway_carbon_grams_total")[0])
    hours = sorted({series.at(agent.t0), series.at(end)})
    assert hours[0] * total / 3.6e6 * 0.999 <= grams <= hours[-1] * total / 3.6e6 * 1.001


def test_a_replica_without_redis_splits_over_its_own_requests_and_says_so() -> None:
    server = EmbeddedRedis().start()
    metrics = GatewayMetrics()
    store = RedisStore(server.url, Keys("t"), metrics, buffer=100, timeout_s=0.5)
    meter = EnergyMeter(metrics, carbon=constant(400.0), max_open_s=60.0, prefill_weight=0.0, share=store, sink=store)
    t0 = float(math.floor(time.time()))
    labels = {"i1": ("m", "SS")}

    def reading(ts: float) -> None:
        meter.apply([InstanceEnergy("i1", "n1", t0 + ts, POWER_W * ts, POWER_W, "modelled", [0])], labels, t0 + ts)

    def request(rid: str, start: float, end: float) -> Work:
        work = meter.start("i1", Work(rid, "m", "k", "SS", t0 + start, 10))
        assert work is not None
        meter.finish("i1", work, t0 + end, 10, 10)
        meter.done(work, 200, t0 + end)
        return work

    def by_key(bookings: list[Booking]) -> dict[str, tuple[int, bool]]:
        out: dict[str, tuple[int, bool]] = {}
        for b in bookings:
            j, _ = out.get(b.request_id or "idle", (0, False))
            out[b.request_id or "idle"] = (j + round(b.energy_j), b.local)
        return out

    async def scenario() -> None:
        try:
            reading(0.0)
            request("w1", 0.2, 0.8)
            for ts in (1.0, 2.0, 3.0):
                reading(ts)
            got = await meter.tick(t0 + 3.5)  # Redis up: the shared split
            assert by_key(got) == {"w1": (1000, False), "idle": (2000, False)}  # both idle seconds claimed here
            server.stop()
            request("w2", 3.2, 3.8)
            for ts in (4.0, 5.0):
                reading(ts)
            assert await meter.tick(t0 + 5.5) == []  # Redis away 2 s: wait for the other replicas' work
            got = await meter.tick(t0 + 16.0)  # away for longer than LOCAL_AFTER_S: this replica's requests alone
            assert by_key(got) == {"w2": (1000, True), "idle": (1000, True)}
            assert meter.local
            w3 = meter.start("i1", Work("w3", "m", "k", "SS", t0 + 5.2, 10))
            assert w3 is not None
            estimate = meter.finish("i1", w3, t0 + 5.6, 10, 10)
            assert estimate is not None and estimate.usage()["split"] == "this replica"
            flagged = metrics.energy_local_joules.labels("m", "SS", "modelled")._value.get()
            assert flagged == pytest.approx(2 * POWER_W)
            back = EmbeddedRedis(port=server.port).start()  # Redis is back: the buffered minutes go out
            try:
                assert await store.flush()
                now = int(time.time())
                rows = aggregate(await read_energy_minutes(back.url, Keys("t"), now // 60 - 2, now // 60 + 1))
            finally:
                back.stop()
            total = next(r for r in rows if r.key == "(model total)")
            assert (total.energy_j, total.local_j) == (pytest.approx(5 * POWER_W), pytest.approx(2 * POWER_W))
            assert "2000.000 J of these were split by a gateway replica" in to_table(rows)  # the report says so
        finally:
            await store.close()
            server.stop()

    asyncio.run(scenario())


def test_a_replica_gone_silent_stops_holding_the_others_books() -> None:
    """Replica b has a request open on the instance and then stops (crashed): its watermark holds a's books
    until it is older than REPLICA_LIVE_S, then a settles every second (b's request's, unpublished, as idle)."""
    server = EmbeddedRedis().start()
    stores = [RedisStore(server.url, Keys("t"), GatewayMetrics(), buffer=100) for _ in range(2)]
    a, b = (EnergyMeter(s.metrics, carbon=constant(400.0), share=s, replica=f"r{n}") for n, s in enumerate(stores))
    t0 = float(math.floor(time.time()))
    labels = {"i1": ("m", "SS")}

    def reading(ts: float) -> None:
        for m in (a, b):
            m.apply([InstanceEnergy("i1", "n1", t0 + ts, POWER_W * ts, POWER_W, "modelled", [0])], labels, t0 + ts)

    async def scenario() -> None:
        try:
            for ts in (0.0, 1.0, 2.0, 3.0):
                reading(ts)
            assert b.start("i1", Work("stuck", "m", "k", "SS", t0 + 0.5, 10)) is not None  # never ends
            assert await b.tick(t0 + 3.5) == []
            assert await a.tick(t0 + 3.6) == [] and a.ledgers["i1"].settled_until == t0  # b holds second 0 on
            for ts in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0):
                reading(ts)
            assert await a.tick(t0 + 13.0) == []  # b's watermark is 9.5 s old: still live
            got = await a.tick(t0 + 14.5)  # 11 s old: b no longer holds the books
            assert a.ledgers["i1"].settled_until == t0 + 14.0
            assert {x.key for x in got} == {IDLE_KEY} and sum(x.energy_j for x in got) == pytest.approx(14 * POWER_W)
        finally:
            for s in stores:
                await s.close()
            server.stop()

    asyncio.run(scenario())
