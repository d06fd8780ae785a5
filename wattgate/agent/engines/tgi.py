"""Hugging Face TGI: ``text-generation-launcher --model-id MODEL --num-shard N --port P``."""

from __future__ import annotations

from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.process import ProcessEngine


class TgiEngine(ProcessEngine):
    kind_value = EngineKind.TGI
    default_command = ("text-generation-launcher",)
    health_paths: tuple[str, ...] = ("/health",)

    def command(self) -> list[str]:
        s = self.spec
        return [
            *self.launcher(),
            "--model-id",
            s.model,
            "--num-shard",
            str(s.tp),
            "--hostname",
            s.host,
            "--port",
            str(s.port),
            "--max-concurrent-requests",
            str(s.max_batch),
            *self.options.extra_args,
        ]
