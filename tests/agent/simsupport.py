"""Emulator test helpers: a sim-backend app under a real uvicorn server on loopback (not a conftest: no clash)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wattgate.agent.engines.sim_server import SimEngine, SimServerSettings, build_app

from tests.agent import simprofiles
from tests.support import UvicornThread
from wattgate.agent.gpu.simulated import SimulatedGpu, open_simulated_gpus

MODEL = "tiny-test"


@dataclass
class SimServer:
    url: str
    engine: SimEngine
    gpus: tuple[SimulatedGpu, ...]


@contextmanager
def serve_sim(
    *, tp: int = 2, speed: float = 20.0, max_batch: int = 256, window_s: float = 10.0, state_dir: Path | None = None
) -> Iterator[SimServer]:
    gpus = open_simulated_gpus(range(tp), state_dir)
    settings = SimServerSettings(model=MODEL, tp=tp, speed=speed, max_batch=max_batch, load_window_s=window_s)
    engine = SimEngine(simprofiles.small_profile(), settings, gpus)
    with UvicornThread(build_app(engine)) as srv:
        yield SimServer(srv.url, engine, gpus)
