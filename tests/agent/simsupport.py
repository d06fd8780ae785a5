"""Emulator test helpers: a sim-backend app under a real uvicorn server on loopback (not a conftest: no clash)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import UvicornThread
from wattgate.agent.engines.emulator import Emulator, EmulatorSettings
from wattgate.agent.engines.emulator_app import build_app
from wattgate.agent.gpu.simulated import SimulatedGpu, open_simulated_gpus
from wattgate.servingmodel.calibration import ServingModel

MODEL = "tiny-test"
ARCH = "llama-3.1-70b"
ENGINE = "vllm-v1"


@dataclass
class SimServer:
    url: str
    emulator: Emulator
    gpus: tuple[SimulatedGpu, ...]


@contextmanager
def serve_sim(
    *, tp: int = 2, speed: float = 20.0, window_s: float = 10.0, state_dir: Path | None = None, **engine: Any
) -> Iterator[SimServer]:
    """``engine``: EmulatorSettings overrides (max_num_seqs, max_num_batched_tokens, gpu_memory_utilization)."""
    gpus = open_simulated_gpus(range(tp), state_dir)
    settings = EmulatorSettings(
        model=MODEL, tp=tp, arch=ARCH, engine=ENGINE, speed=speed, load_window_s=window_s, **engine
    )
    emulator = Emulator(ServingModel(ARCH, ENGINE), settings, gpus)
    with UvicornThread(build_app(emulator)) as srv:
        yield SimServer(srv.url, emulator, gpus)
