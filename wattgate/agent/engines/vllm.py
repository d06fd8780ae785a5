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

import time

import httpx

from wattgate.agent.engines.base import EngineError, EngineKind
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

    @property
    def can_sleep(self) -> bool:
        return self.options.sleep_mode

    def sleep(self, timeout_s: float) -> None:
        self._switch("/sleep?level=1", asleep=True, timeout_s=timeout_s)

    def wake(self, timeout_s: float) -> None:
        self._switch("/wake_up", asleep=False, timeout_s=timeout_s)

    def is_sleeping(self) -> bool | None:
        try:
            r = self._http.get(self.base_url + "/is_sleeping")
            value = r.json().get("is_sleeping") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return value if isinstance(value, bool) else None

    def _switch(self, path: str, *, asleep: bool, timeout_s: float) -> None:
        """POST ``path``, then poll ``/is_sleeping`` until it reads ``asleep`` (at most ``timeout_s``)."""
        iid = self.spec.instance_id
        if not self.can_sleep:
            raise EngineError(f"{iid}: the engine was started without sleep mode (agent --sleep-mode)")
        deadline = time.monotonic() + timeout_s
        try:
            r = self._http.post(self.base_url + path, timeout=httpx.Timeout(max(1.0, timeout_s)))
        except httpx.HTTPError as exc:
            raise EngineError(f"{iid}: POST {path} failed: {type(exc).__name__} {exc}") from exc
        if r.status_code != 200:
            hint = (
                " (no sleep endpoints: VLLM_SERVER_DEV_MODE=1 did not reach the server?)"
                if r.status_code == 404
                else ""
            )
            raise EngineError(f"{iid}: POST {path} answered HTTP {r.status_code}: {_snippet(r.text)}{hint}")
        while True:
            now = self.is_sleeping()
            if now is asleep:
                return
            if not self.running():
                raise EngineError(f"{iid}: the engine exited after POST {path} ({self.exit_reason()})")
            if time.monotonic() >= deadline:
                want = "asleep" if asleep else "awake"
                raise EngineError(f"{iid}: not {want} {timeout_s:.0f} s after POST {path} (/is_sleeping: {now})")
            self._sleep(0.05)


def _snippet(text: str, limit: int = 200) -> str:
    one_line = " ".join(text.split())
    return (one_line[:limit] + "...") if len(one_line) > limit else one_line or "(empty body)"
