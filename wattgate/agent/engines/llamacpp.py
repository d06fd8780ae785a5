"""llama.cpp: ``llama-server --model FILE.gguf --alias NAME --host H --port P --parallel B --metrics``.

The instance's model name is the alias clients and gateways use; ``--parallel`` (slots) is the
instance's batch bound, and ``--metrics`` exposes ``llamacpp:requests_processing`` and
``llamacpp:requests_deferred``, the in-flight count a drain waits on. ``/health`` answers 503 while the
model loads and 200 once it serves. Context size, threads and GPU layers go in ``--engine-arg``
(llama.cpp splits ``--ctx-size`` across the slots).
"""

from __future__ import annotations

from wattgate.agent.engines.base import EngineError, EngineKind
from wattgate.agent.engines.process import ProcessEngine


class LlamaCppEngine(ProcessEngine):
    kind_value = EngineKind.LLAMA_CPP
    default_command = ("llama-server",)
    health_paths: tuple[str, ...] = ("/health",)

    def command(self) -> list[str]:
        s, model_file = self.spec, self.options.model_file
        if model_file is None:
            raise EngineError(f"{s.instance_id}: llama.cpp needs a model file (--model-file)")
        return [
            *self.launcher(),
            "--model",
            str(model_file),
            "--alias",
            s.model,
            "--host",
            s.host,
            "--port",
            str(s.port),
            "--parallel",
            str(s.max_batch),
            "--metrics",
            *self.options.extra_args,
        ]
