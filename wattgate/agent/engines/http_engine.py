"""What every engine does the same way: its identity (the Engine protocol's properties) and the HTTP
side (health, in-flight requests from ``/metrics``); managed and external engines build on it."""

from __future__ import annotations

import httpx

from wattgate.agent.engines.base import (
    IN_FLIGHT_METRICS,
    WAITING_METRICS,
    EngineError,
    EngineKind,
    EngineSpec,
    parse_metrics,
)

_TIMEOUT = httpx.Timeout(2.0)


class HttpEngine:
    """An engine serving HTTP at ``base_url``. Subclasses set ``kind_value`` and ``managed_value``
    and say whether the server runs (``running``); ``pid`` is None unless they know one."""

    kind_value: EngineKind
    managed_value: bool
    health_paths: tuple[str, ...] = ("/health", "/v1/models")

    def __init__(self, spec: EngineSpec, base_url: str) -> None:
        self._spec = spec
        self._url = base_url
        self._http = httpx.Client(timeout=_TIMEOUT, limits=httpx.Limits(max_connections=4), trust_env=False)

    @property
    def spec(self) -> EngineSpec:
        return self._spec

    @property
    def kind(self) -> EngineKind:
        return self.kind_value

    @property
    def managed(self) -> bool:
        return self.managed_value

    @property
    def base_url(self) -> str:
        return self._url

    @property
    def metrics_kind(self) -> EngineKind:
        """Whose ``/metrics`` names count the requests in flight (an external server says what it runs)."""
        return self.kind

    @property
    def pid(self) -> int | None:
        return None

    def running(self) -> bool:
        raise NotImplementedError

    def exit_reason(self) -> str:
        return "exited"

    def healthy(self) -> bool:
        """Running, and the first health path the server has (not 404) answers 200."""
        if not self.running():
            return False
        for path in self.health_paths:
            try:
                r = self._http.get(self._url + path)
            except httpx.HTTPError:
                return False
            if r.status_code != 404:
                return r.status_code == 200
        return False

    def in_flight(self) -> int | None:
        return self._metric(IN_FLIGHT_METRICS[self.metrics_kind])

    def waiting(self) -> int | None:
        return self._metric(WAITING_METRICS[self.metrics_kind])

    def _metric(self, names: tuple[str, ...]) -> int | None:
        """The sum of ``names`` on the engine's /metrics; None when it does not answer or lacks them."""
        try:
            r = self._http.get(self._url + "/metrics")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        value = parse_metrics(r.text, names)
        return None if value is None else int(value)

    @property
    def can_sleep(self) -> bool:
        return False

    def sleep(self, timeout_s: float) -> None:
        raise EngineError(f"{self._spec.instance_id}: a {self.kind} engine has no sleep mode")

    def wake(self, timeout_s: float) -> None:
        raise EngineError(f"{self._spec.instance_id}: a {self.kind} engine has no sleep mode")

    def is_sleeping(self) -> bool | None:
        return None

    def close(self) -> None:
        self._http.close()
