"""vLLM: ``vllm serve MODEL --tensor-parallel-size N --port P --max-num-seqs B``, with sleep mode.

With sleep mode on, the server starts with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``
(vLLM exposes ``POST /sleep?level=1``, ``POST /wake_up`` and ``GET /is_sleeping`` only in dev
mode). Level 1 offloads the weights to CPU memory and drops the KV cache, so a scaled-down
instance wakes in well under a second instead of reloading its weights.
"""

from __future__ import annotations

import httpx

from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.process import ProcessEngine


class VllmEngine(ProcessEngine):
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

    def sleep(self) -> bool:
        return self.options.sleep_mode and self._post("/sleep?level=1")

    def wake(self) -> bool:
        return self.options.sleep_mode and self._post("/wake_up")

    def _post(self, path: str) -> bool:
        try:
            r = self._http.post(self.base_url + path, timeout=httpx.Timeout(60.0))
        except httpx.HTTPError:
            return False
        return r.status_code == 200
