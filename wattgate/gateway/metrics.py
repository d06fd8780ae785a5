"""Prometheus metrics of one gateway app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wattgate.gateway.energy import Booking

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
        energy = ["model", "pool", "key", "status", "source"]
        self.energy_joules = Counter(
            "wattgate_gateway_energy_joules",
            "Energy booked to requests (key: the API key's label) and to idle instances (key '(idle)'); source: "
            "measured (NVML) or modelled (simulated GPUs). Booked once a request's intervals settle",
            energy,
            registry=r,
        )
        self.energy_tokens = Counter(
            "wattgate_gateway_energy_tokens", "Prompt + output tokens of the booked requests", energy, registry=r
        )
        self.energy_requests = Counter(
            "wattgate_gateway_energy_requests", "Requests whose energy was booked", energy, registry=r
        )
        self.carbon_grams = Counter(
            "wattgate_gateway_carbon_grams",
            "gCO2e of the booked energy: each interval's at the configured carbon intensity of its time (modelled)",
            energy,
            registry=r,
        )
        self.energy_settled = Gauge(
            "wattgate_gateway_energy_settled_until_seconds",
            "Unix time up to which an instance's energy is booked (its last settled counter reading)",
            ["instance"],
            registry=r,
        )
        self.energy_local_joules = Counter(
            "wattgate_gateway_energy_local_split_joules",
            "Energy this replica booked while Redis was unreachable, split over its own requests alone (other "
            "gateway replicas may have booked the same intervals); part of wattgate_gateway_energy_joules",
            ["model", "pool", "source"],
            registry=r,
        )
        self.energy_gaps = Counter(
            "wattgate_gateway_energy_gaps",
            "Breaks in an instance's energy counter series (reset, source change, readings stopped)",
            ["instance"],
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

    def book_energy(self, b: Booking) -> None:
        labels = (b.model, b.pool, b.key, b.status, b.source)
        self._child(self.energy_joules, *labels).inc(b.energy_j)
        self._child(self.carbon_grams, *labels).inc(b.carbon_g)
        if b.requests:
            self._child(self.energy_tokens, *labels).inc(b.tokens)
            self._child(self.energy_requests, *labels).inc(b.requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
