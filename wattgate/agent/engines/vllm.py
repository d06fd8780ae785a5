"""vLLM: ``vllm serve MODEL --tensor-parallel-size N --port P --max-num-seqs B``, with sleep mode.

Sleep mode (the agent's ``--sleep-mode``): the server starts with ``--enable-sleep-mode`` and
``VLLM_SERVER_DEV_MODE=1``, because vLLM mounts its sleep endpoints only in dev mode
(``attach_router`` in ``vllm/entrypoints/serve/sleep/api_router.py``):

- ``POST /sleep?level=1``: level 1 offloads the weights to CPU memory and discards the KV cache
  (docs.vllm.ai, "Sleep Mode"), so the host needs the weights' size in free RAM. Recent vLLM also reads
  ``mode`` (``abort``, its default, aborts what still runs; ``wait``; ``keep``); the agent drains the
  instance first and sends none, which reads the same on versions from before ``mode``.
- ``POST /wake_up``: wakes everything (``?tags=weights`` / ``kv_cache`` would wake a part).
- ``GET /is_sleeping``: ``{"is_sleeping": true|false}``.

Both POSTs answer 200 with an empty body, and vLLM warns that the answer may come before the engine
has done it (the FIXME in both handlers), so the agent polls ``/is_sleeping`` until it reads the state it
asked for. ``/health`` answers 200 while the engine sleeps (its check looks only for a dead engine), so
health alone never says an instance is awake. Published: switching models with sleep mode is 18-200x faster
than a full reload, which takes 30-100+ s (blog.vllm.ai/2025/10/26/sleep-mode.html, 0.6B to 235B models).
"""

from __future__ import annotations

from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.sleepable import SleepableEngine


class VllmEngine(SleepableEngine):
    kind_value = EngineKind.VLLM
    default_command = ("vllm", "serve")
    health_paths: tuple[str, ...] = ("/health",)

    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            *self.launcher(),
            s.model,
            "--host",
            s.host,
            "--port",
            str(s.port),
            "--tensor-parallel-size",
            str(s.tp),
            "--max-num-seqs",
            str(s.max_batch),
        ]
        if self.options.sleep_mode:
            cmd.append("--enable-sleep-mode")
        return [*cmd, *self.options.extra_args]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.options.sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env
