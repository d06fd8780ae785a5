"""The engines file (``STATE_DIR/engines.json``): each managed engine's plan entry, launch spec, pid, clock and
whether it sleeps, so that an agent started after a crash adopts what the previous one left running."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from wattgate.agent.engines.base import EngineSpec
from wattgate.agent.errors import AgentError
from wattgate.planner.contract import PlannedInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedEngine:
    planned: PlannedInstance
    spec: EngineSpec
    pid: int
    sm_clock_mhz: int | None = None
    asleep: bool = False  # on standby (vLLM sleep mode) when written


def read_engines(path: Path) -> list[SavedEngine]:
    """The engines a previous agent wrote; none when there is no file, one it cannot read, or a bad entry."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.error("cannot read %s (%s): not adopting engines", path, exc)
        return []
    out = []
    for entry in saved.get("engines", []) if isinstance(saved, dict) else []:
        try:
            p = PlannedInstance(**entry["planned"])
            spec = EngineSpec(
                **{**entry["spec"], "gpus": tuple(p.gpus), "gpu_uuids": tuple(entry["spec"]["gpu_uuids"])}
            )
            out.append(SavedEngine(p, spec, int(entry["pid"]), entry.get("sm_clock_mhz"), entry.get("asleep") is True))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("ignoring a saved engine entry: %s", exc)
    return out


def write_engines(path: Path, engines: Iterable[SavedEngine]) -> None:
    """Replace the file atomically (write a temporary file, rename it over)."""
    entries = [
        {
            "planned": asdict(e.planned),
            "spec": asdict(e.spec),
            "pid": e.pid,
            "sm_clock_mhz": e.sm_clock_mhz,
            "asleep": e.asleep,
        }
        for e in engines
    ]
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"engines": entries}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise AgentError(f"cannot write {path}: {exc}") from exc
