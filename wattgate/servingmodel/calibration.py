"""The calibrated serving model: which engine, overheads, clock law and power model, read from a JSON document.

``data/calibration-h100.json`` is written by ``scripts/calibrate_serving_model.py`` from the fits
in ``fit.py``; every number in it is documented there (``"provenance"``) and in the README.
``ServingModel`` is what the rest of wattgate asks for an engine: an architecture, an engine
calibration (``vllm-v1``: ``vllm serve`` V1 defaults, the default; ``dynamollm-2024``: the engine of
the DynamoLLM characterization) and a TP.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from wattgate.servingmodel.arch import architecture
from wattgate.servingmodel.engine import Engine, EngineConfig, Scheduler
from wattgate.servingmodel.errors import ServingModelError
from wattgate.servingmodel.kernels import DEFAULT_KERNELS, kernel_curves
from wattgate.servingmodel.power import PowerModel
from wattgate.servingmodel.steps import ClockLaw, EngineOverheads, StepCost

FORMAT = "wattgate-serving-model"
DEFAULT_CALIBRATION = "calibration-h100.json"
DEFAULT_ENGINE = "vllm-v1"
DEFAULT_ARCH = "llama-3.1-70b"
_PACKAGE = "wattgate.servingmodel.data"


@dataclass(frozen=True)
class EngineCalibration:
    """One engine's scheduler settings (vLLM names, TP left open) and its fitted overheads."""

    name: str
    config: EngineConfig
    overheads: EngineOverheads
    about: str = ""


@dataclass(frozen=True)
class Calibration:
    gpu: str
    kernels: str
    clock_law: ClockLaw
    power: PowerModel
    engines: dict[str, EngineCalibration]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "gpu": self.gpu,
            "kernels": self.kernels,
            "clock_law": dataclasses.asdict(self.clock_law),
            "power": dataclasses.asdict(self.power),
            "engines": {
                name: {
                    "about": e.about,
                    "config": {
                        k: (v.value if isinstance(v, Scheduler) else v)
                        for k, v in dataclasses.asdict(e.config).items()
                        if k != "tp"
                    },
                    "overheads": dataclasses.asdict(e.overheads),
                }
                for name, e in self.engines.items()
            },
            "provenance": self.provenance,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Calibration:
        if doc.get("format") != FORMAT or doc.get("version") != 1:
            raise ServingModelError(f"not a {FORMAT} v1 document")
        try:
            engines = {}
            for name, e in doc["engines"].items():
                cfg = dict(e["config"])
                cfg["scheduler"] = Scheduler(cfg["scheduler"])
                engines[name] = EngineCalibration(
                    name, EngineConfig(**cfg), EngineOverheads(**e["overheads"]), e["about"]
                )
            return cls(
                doc["gpu"],
                doc["kernels"],
                ClockLaw(**doc["clock_law"]),
                PowerModel(**doc["power"]),
                engines,
                doc.get("provenance", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServingModelError(f"malformed serving-model calibration: {exc}") from exc


@functools.cache
def load_calibration(name: str = DEFAULT_CALIBRATION) -> Calibration:
    try:
        text = resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
        return Calibration.from_document(json.loads(text))
    except (OSError, ValueError) as exc:
        raise ServingModelError(f"cannot read serving-model calibration {name}: {exc}") from exc


def read_calibration(path: Path) -> Calibration:
    try:
        return Calibration.from_document(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ServingModelError(f"cannot read serving-model calibration {path}: {exc}") from exc


class ServingModel:
    """Builds engines of one architecture under one engine calibration (see the module docstring)."""

    def __init__(
        self, arch: str = DEFAULT_ARCH, engine: str = DEFAULT_ENGINE, calibration: Calibration | None = None
    ) -> None:
        self.calibration = calibration or load_calibration()
        if engine not in self.calibration.engines:
            raise ServingModelError(f"unknown engine {engine!r}; known: {', '.join(self.calibration.engines)}")
        self.arch = architecture(arch)
        self.engine_name = engine
        self.engine_calibration = self.calibration.engines[engine]
        self._costs: dict[int, StepCost] = {}

    @property
    def max_clock_mhz(self) -> int:
        return self.calibration.clock_law.max_clock_mhz

    def step_cost(self, tp: int) -> StepCost:
        cost = self._costs.get(tp)
        if cost is None:
            curves = kernel_curves(self.arch.name, tp, self.calibration.kernels or DEFAULT_KERNELS)
            cost = self._costs[tp] = StepCost(self.arch, tp, curves, self.engine_calibration.overheads)
        return cost

    def config(self, tp: int, **overrides: Any) -> EngineConfig:
        return dataclasses.replace(self.engine_calibration.config, tp=tp, **overrides)

    def engine(self, tp: int, *, clock_mhz: int | None = None, start_s: float = 0.0, **overrides: Any) -> Engine:
        return Engine(
            self.step_cost(tp),
            self.calibration.clock_law,
            self.calibration.power,
            self.config(tp, **overrides),
            clock_mhz=clock_mhz or self.max_clock_mhz,
            request_latency_s=self.engine_calibration.overheads.request_s,
            start_s=start_s,
        )
