"""The dashboard's energy per model: J/token over the booked requests' tokens, idle energy included."""

from __future__ import annotations

import asyncio

import pytest

from wattgate.gateway.dashboard import Sampler, model_energy
from wattgate.gateway.energy import Booking
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.planner.contract import IDLE_KEY


def test_model_energy_counts_idle_energy_in_j_per_token_and_keeps_sources_apart() -> None:
    m = GatewayMetrics()
    m.book_energy(Booking("llama", "key-a", "SS", "200", "modelled", 300.0, 100, 1, 1.0, "r1", 300.0 / 3.6e6 * 400.0))
    m.book_energy(Booking("llama", "key-b", "SM", "200", "modelled", 500.0, 300, 1, 1.0, "r2", 500.0 / 3.6e6 * 400.0))
    m.book_energy(Booking("llama", IDLE_KEY, "SS", "idle", "modelled", 200.0, 0, 0, 2.0, "", 200.0 / 3.6e6 * 400.0))
    m.book_energy(Booking("llama", "key-a", "SS", "200", "measured", 90.0, 10, 1, 1.0, "r3", 90.0 / 3.6e6 * 400.0))
    rows = {r["source"]: r for r in model_energy(m)}
    assert rows["modelled"]["energy_j"] == 1000.0 and rows["modelled"]["idle_j"] == 200.0
    assert rows["modelled"]["tokens"] == 400.0 and rows["modelled"]["j_per_token"] == 2.5
    assert rows["modelled"]["carbon_g"] == pytest.approx(1000.0 / 3.6e6 * 400.0)
    assert rows["measured"]["j_per_token"] == 9.0
    data = asyncio.run(Sampler(m, None).sample({}, now=10.0))
    assert [r["j_per_token"] for r in data["models"]] == [9.0, 2.5]
