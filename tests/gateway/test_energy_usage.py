"""Energy per request through the gateway: ``usage.energy`` in the real ``openai`` client's objects (streamed
and not), the observation, the metrics by key, and ``wattgate report`` agreeing with the metrics."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Servers
from tests.support import wait_for
from wattgate.cli import main as wattgate_main
from wattgate.gateway.store import publish_instance
from wattgate.planner.contract import IDLE_KEY, InstanceEnergy, InstanceRecord, Keys, Observation

KEYS = Keys()
POWER_W = 1000.0


class FakeAgent:
    """Writes instance ``i1``'s energy counter (1000 W from the start, measured) every 0.1 s, as an agent would."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.t0 = time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def counter_j(self, ts: float) -> float:
        return POWER_W * (ts - self.t0)

    def _run(self) -> None:
        while not self.stop.is_set():
            ts = time.time()
            msg = InstanceEnergy("i1", "n1", ts, self.counter_j(ts), POWER_W, "measured", [0])
            self.r.hset(KEYS.energy, "i1", msg.to_json())
            self.stop.wait(0.1)


@pytest.fixture
def agent(redis_url: str) -> Iterator[FakeAgent]:
    a = FakeAgent(redis_url)
    a.thread.start()
    yield a
    a.stop.set()
    a.thread.join()
    a.r.close()


def samples(gw: str, *names: str) -> list[list[tuple[dict[str, str], float]]]:
    """The samples of each series named, from one scrape."""
    out: list[list[tuple[dict[str, str], float]]] = [[] for _ in names]
    for family in text_string_to_metric_families(httpx.get(gw + "/metrics").text):
        for s in family.samples:
            if s.name in names:
                out[names.index(s.name)].append((s.labels, s.value))
    return out


def label(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def test_each_response_carries_its_energy_and_the_books_agree(
    servers: Servers, redis_url: str, agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = servers.backend(tokens=6, tbt_s=0.03, ttft_s=0.05)
    names = (f"{label('bob-secret')}=bob",)
    gw, state = servers.gateway([], redis_url=redis_url, energy_interval_s=0.1, energy_key_names=names)
    asyncio.run(publish_instance(redis_url, KEYS, InstanceRecord("i1", url, "fake-model", "SM", "n1", "ready")))
    meter = state.energy
    assert meter is not None
    wait_for(lambda: "i1" in meter.ledgers and meter.ledgers["i1"].metered, "the gateway to read i1's counter")
    alice = openai.OpenAI(base_url=gw + "/v1", api_key="alice-secret", max_retries=0)
    bob = openai.OpenAI(base_url=gw + "/v1", api_key="bob-secret", max_retries=0)
    msgs = [{"role": "user", "content": "how much energy does this take?"}]

    t0 = time.monotonic()
    chat = alice.chat.completions.create(model="fake-model", messages=msgs, max_tokens=50)  # type: ignore[arg-type]
    took_s = time.monotonic() - t0
    assert chat.usage is not None
    energy = chat.usage.model_extra["energy"] if chat.usage.model_extra else None
    assert energy is not None and energy["source"] == "measured" and energy["estimate"] is True
    assert 0 < energy["joules"] <= POWER_W * took_s  # at most the instance's energy over the request
    assert chat.usage.completion_tokens == 6  # the backend's usage is kept as it was

    chunks = list(
        bob.chat.completions.create(
            model="fake-model",
            messages=msgs,  # type: ignore[arg-type]
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.model_extra
    assert last.usage.model_extra["energy"]["source"] == "measured" and last.usage.model_extra["energy"]["joules"] > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 t3 t4 t5 "

    text = alice.completions.create(model="fake-model", prompt="hello", max_tokens=20)
    assert text.usage is not None and text.usage.model_extra and text.usage.model_extra["energy"]["joules"] > 0
    plain = list(bob.chat.completions.create(model="fake-model", messages=msgs, max_tokens=50, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in plain)  # no usage asked for: none sent, yet its energy is booked

    def booked() -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in samples(gw, "wattgate_gateway_energy_requests_total")[0]:
            out[labels["key"]] = out.get(labels["key"], 0) + value
        return out

    wait_for(lambda: booked() == {label("alice-secret"): 2, "bob": 2}, "four requests booked", timeout_s=15)

    def idle_booked() -> bool:  # the seconds after the last request: nobody works in them
        return any(s["key"] == IDLE_KEY and v > 0 for s, v in samples(gw, "wattgate_gateway_energy_joules_total")[0])

    wait_for(idle_booked, "an idle second booked", timeout_s=15)
    joules, grams = samples(gw, "wattgate_gateway_energy_joules_total", "wattgate_gateway_carbon_grams_total")
    assert {s["source"] for s, _ in joules} == {"measured"}
    assert {s["status"] for s, v in joules if s["key"] != IDLE_KEY} == {"200"}
    by_key: dict[tuple[str, str], float] = {}
    for s, v in joules:
        by_key[(s["model"], s["key"])] = by_key.get((s["model"], s["key"]), 0) + v
    assert by_key[("fake-model", IDLE_KEY)] > 0 and by_key[("fake-model", "bob")] > 0
    carbon = sum(v for _, v in grams)
    assert carbon == pytest.approx(sum(by_key.values()) / 3.6e6 * 475.0)

    r = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: r.xlen(KEYS.observations) == 4, "four observations")
        observed = [Observation.from_json(f[b"json"]) for _, f in r.xrange(KEYS.observations)]
    finally:
        r.close()
    assert all(o.energy_j and o.energy_j > 0 and o.energy_source == "measured" for o in observed)

    def report() -> dict[tuple[str, str], tuple[float, float]]:
        capsys.readouterr()
        assert wattgate_main(["report", "--since", "1h", "--redis-url", redis_url, "--csv"]) == 0
        rows = csv.DictReader(io.StringIO(capsys.readouterr().out))
        return {(row["model"], row["key"]): (float(row["energy_j"]), float(row["carbon_g"])) for row in rows}

    agent.stop.set()  # no more readings: no more intervals to book, the books come to rest
    agent.thread.join()

    def agree() -> bool:
        totals: dict[tuple[str, str], float] = {}
        grams: dict[tuple[str, str], float] = {}
        joules, carbon = samples(gw, "wattgate_gateway_energy_joules_total", "wattgate_gateway_carbon_grams_total")
        for (labels, value), (_, g) in zip(joules, carbon, strict=True):
            k = (labels["model"], labels["key"])
            totals[k] = totals.get(k, 0) + value
            grams[k] = grams.get(k, 0) + g
        got = report()
        return (
            len(totals) == 3
            and all(abs(got.get(k, (-1, 0))[0] - v) <= 1e-6 * v + 1e-3 for k, v in totals.items())
            and all(abs(got[k][1] - g) <= 1e-6 * g + 1e-4 for k, g in grams.items())
            and (abs(got[("fake-model", "(model total)")][0] - sum(totals.values())) < 1e-3)
        )

    wait_for(agree, "wattgate report to agree with the gateway's metrics", timeout_s=10)
