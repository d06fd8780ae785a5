"""Energy per request through the demo's emulated cluster (``wattgate demo --external``'s processes): the energy
booked to requests plus the idle shares adds up to the simulated GPUs' own counters, and every response the real
``openai`` client gets carries its modelled energy."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wattgate.agent.gpu.simulated import SimulatedGpu
from wattgate.demo.cluster import MODEL, Cluster, ClusterSettings
from wattgate.embedded_redis import free_port
from wattgate.planner.contract import IDLE_KEY

GPUS = 8  # one node: two external TP4 engines


class CounterLog:
    """The simulated GPUs' summed energy counter, read every 50 ms by the test itself (not through wattgate)."""

    def __init__(self, gpu_dir: Path) -> None:
        self.gpus = [SimulatedGpu(gpu_dir, i) for i in range(GPUS)]
        self.ts: list[float] = []
        self.joules: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.time()
            j = sum(g.energy_j() for g in self.gpus)
            self.ts.append((t0 + time.time()) / 2)
            self.joules.append(j)
            self.stop.wait(0.05)

    def at(self, ts: float) -> float:
        """The counter at ``ts``, interpolated between the two readings around it."""
        k = bisect.bisect_left(self.ts, ts)
        assert 0 < k < len(self.ts), "no reading around that time"
        t0, t1, j0, j1 = self.ts[k - 1], self.ts[k], self.joules[k - 1], self.joules[k]
        return j0 + (j1 - j0) * (ts - t0) / (t1 - t0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(ClusterSettings(nodes=(("node1", GPUS),), port=free_port(), run_dir=tmp_path, external=True))
    try:
        c.start()
        c.wait_ready()
        yield c
    finally:
        assert c.stop() == []


def books(gw: str) -> tuple[float, float, float, float]:
    """From one scrape: joules booked to requests, to idle instances, requests booked, and the time up to which
    every instance is booked (the earliest of their settled readings)."""
    req = idle = n = 0.0
    settled = []
    for family in text_string_to_metric_families(httpx.get(gw + "/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == "wattgate_gateway_energy_joules_total":
                assert s.labels["source"] == "modelled"
                if s.labels["key"] == IDLE_KEY:
                    idle += s.value
                else:
                    req += s.value
            elif s.name == "wattgate_gateway_energy_requests_total":
                n += s.value
            elif s.name == "wattgate_gateway_energy_settled_until_seconds":
                settled.append(s.value)
    return req, idle, n, min(settled) if len(settled) == 2 else 0.0


def wait(cond: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_booked_energy_adds_up_to_the_simulated_gpus_counters(cluster: Cluster) -> None:
    gw = cluster.url
    log = CounterLog(cluster.gpu_dir("node1"))
    log.thread.start()
    try:
        wait(lambda: log.ts and books(gw)[3] > log.ts[0], "the gateway to book both instances' energy")
        req_a, idle_a, _, t_a = books(gw)
        time.sleep(0.2)  # the counter log has a reading after t_a
        clients = [openai.OpenAI(base_url=gw + "/v1", api_key=k, max_retries=0) for k in ("team-a", "team-b")]

        def one(n: int) -> float:
            client = clients[n % 2]
            msgs = [{"role": "user", "content": "Tell me about the energy of serving language models. " * (1 + n % 5)}]
            if n % 3:  # streamed, with usage
                chunks = list(
                    client.chat.completions.create(
                        model=MODEL, messages=msgs, max_tokens=20 + n % 60, stream=True,  # type: ignore[arg-type]
                        stream_options={"include_usage": True},
                    )
                )  # fmt: skip
                usage = chunks[-1].usage
            else:
                usage = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20 + n % 60).usage  # type: ignore[arg-type]
            assert usage is not None and usage.model_extra is not None
            energy = usage.model_extra["energy"]
            assert energy["source"] == "modelled" and energy["estimate"] is True
            return float(energy["joules"])

        with ThreadPoolExecutor(6) as pool:
            estimates = list(pool.map(one, range(36)))
        ended = time.time()
        assert all(j > 0 for j in estimates)
        wait(lambda: books(gw)[2] == 36 and books(gw)[3] > ended + 1, "every request booked")
        req_b, idle_b, _, t_b = books(gw)
        time.sleep(0.2)
        booked = (req_b - req_a) + (idle_b - idle_a)
        counted = log.at(t_b) - log.at(t_a)
    finally:
        log.stop.set()
        log.thread.join()
    assert booked == pytest.approx(counted, rel=0.02), (booked, counted)
    assert req_b - req_a > 0 and idle_b - idle_a > 0  # two instances, one busier: both kinds of share
    # the responses carried estimates made when each ended; the books settled later (README: Energy per request)
    assert sum(estimates) == pytest.approx(req_b - req_a, rel=0.5)
