"""Sleep mode over HTTP, as vLLM serves it (``POST /sleep?level=1``, ``POST /wake_up``, ``GET /is_sleeping``): the
base of the engines that have it (vLLM, and the emulated engine that speaks vLLM's endpoints)."""

from __future__ import annotations

import time

import httpx

from wattgate.agent.engines.base import EngineError
from wattgate.agent.engines.process import ProcessEngine


class SleepableEngine(ProcessEngine):
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
