"""An external engine: a server the user already runs. Never started or stopped by the agent; the
agent only locks its GPUs' clocks, reads its /metrics and reports telemetry."""

from __future__ import annotations

import httpx

from wattgate.agent.engines.base import IN_FLIGHT_METRICS, EngineKind, EngineSpec, parse_metrics


class ExternalEngine:
    def __init__(self, spec: EngineSpec, base_url: str | None = None) -> None:
        self._spec = spec
        self._url = (base_url or spec.base_url).rstrip("/")
        self._http = httpx.Client(timeout=httpx.Timeout(2.0), trust_env=False)

    @property
    def spec(self) -> EngineSpec:
        return self._spec

    @property
    def kind(self) -> EngineKind:
        return EngineKind.EXTERNAL

    @property
    def managed(self) -> bool:
        return False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def base_url(self) -> str:
        return self._url

    def start(self) -> None:
        return None

    def running(self) -> bool:
        return True

    def healthy(self) -> bool:
        for path in ("/health", "/v1/models"):
            try:
                r = self._http.get(self._url + path)
            except httpx.HTTPError:
                return False
            if r.status_code != 404:
                return r.status_code == 200
        return False

    def in_flight(self) -> int | None:
        try:
            r = self._http.get(self._url + "/metrics")
        except httpx.HTTPError:
            return None
        value = parse_metrics(r.text, IN_FLIGHT_METRICS[EngineKind.EXTERNAL]) if r.status_code == 200 else None
        return None if value is None else int(value)

    def drain(self, timeout_s: float) -> bool:
        return True  # not ours to stop: nothing to wait for

    def stop(self, drain_timeout_s: float) -> None:
        return None

    def sleep(self) -> bool:
        return False

    def wake(self) -> bool:
        return False

    def close(self) -> None:
        self._http.close()
