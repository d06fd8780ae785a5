"""Prometheus metrics of one gateway app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
_TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class GatewayMetrics:
    """Every series the gateway exports; all timings are measured (gateway timers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "wattgate_gateway_requests",
            "Finished requests by endpoint, pool and HTTP status",
            ["endpoint", "pool", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "wattgate_gateway_ttft_seconds",
            "Time to first token, measured at the gateway",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tbt = Histogram(
            "wattgate_gateway_tbt_seconds",
            "Mean time between tokens per stream, measured at the gateway",
            ["pool"],
            buckets=_TBT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "wattgate_gateway_overhead_seconds",
            "Gateway time before the upstream request is sent (parse, classify, route), measured",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "wattgate_gateway_in_flight", "Requests in flight per instance", ["instance"], registry=r
        )
        self.retries = Counter("wattgate_gateway_retries", "Requests retried on another instance", registry=r)
        self.ejections = Counter(
            "wattgate_gateway_ejections", "Instances ejected after failures", ["instance"], registry=r
        )
        self.no_capacity = Counter(
            "wattgate_gateway_no_capacity",
            "Requests refused with 503: no instance could take them",
            ["pool"],
            registry=r,
        )
        self.redis_errors = Counter("wattgate_gateway_redis_errors", "Redis commands that failed", ["op"], registry=r)
        self.redis_dropped = Counter(
            "wattgate_gateway_redis_dropped", "Records dropped because Redis was down or slow", ["kind"], registry=r
        )
        self.registry_stale = Gauge(
            "wattgate_gateway_registry_stale",
            "1 while the instance list from Redis could not be refreshed (the last one is kept)",
            registry=r,
        )
        self.plan_version = Gauge(
            "wattgate_gateway_plan_version",
            "Version of the planner's plan the gateway routes by (0: none, routing by the spill chain alone)",
            registry=r,
        )
        self.ejections_capped = Counter(
            "wattgate_gateway_ejections_capped",
            "Ejections not made because max_ejection_percent of the pool was ejected already",
            ["instance"],
            registry=r,
        )
        self.request_faults = Counter(
            "wattgate_gateway_request_faults",
            "Requests that failed the same way on two instances: the request's fault, nobody ejected",
            registry=r,
        )
        self.panic = Counter(
            "wattgate_gateway_panic_routed",
            "Requests sent to an ejected or probe-failing instance because too few in its pool were routable",
            ["pool"],
            registry=r,
        )
        self.deadlines = Counter(
            "wattgate_gateway_deadline_exceeded",
            "Requests ended by their deadline (first_byte: a stream's first event; total: the whole request)",
            ["kind"],
            registry=r,
        )
        self.client_connections = Gauge("wattgate_gateway_client_connections", "Open client connections", registry=r)
        self.connections_closed = Counter(
            "wattgate_gateway_client_connections_closed",
            "Client connections the gateway closed: header_timeout, header_too_large, evicted (the longest "
            "waiting for a request head, to admit a new one over max_client_connections), over_limit, bad_request",
            ["reason"],
            registry=r,
        )
        self.instances = Gauge(
            "wattgate_gateway_instances",
            "Known instances by source and routable state",
            ["source", "routable"],
            registry=r,
        )

        # Children of the per-request series by label values: ``labels()`` validates and locks on every call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, family: Any, *values: str) -> Any:
        key = (id(family), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    def request_done(self, endpoint: str, pool: str, status: int) -> None:
        self._child(self.requests, endpoint, pool, str(status)).inc()

    def observe_ttft(self, pool: str, seconds: float) -> None:
        self._child(self.ttft, pool).observe(seconds)

    def observe_tbt(self, pool: str, seconds: float) -> None:
        self._child(self.tbt, pool).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
