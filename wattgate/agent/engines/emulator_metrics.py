"""vLLM's Prometheus series for one emulated instance: every timing modelled, in simulated seconds.

Names, types and the ``model_name`` label are vLLM V1's (``vllm:num_requests_running``,
``vllm:kv_cache_usage_perc``, ``vllm:prompt_tokens_total``, ``vllm:request_success_total`` by
``finished_reason``, ``vllm:time_to_first_token_seconds``, ``vllm:engine_sleep_state``, ...), so what scrapes
a vLLM instance scrapes this one; ``wattgate_sim_*`` add the emulator's own gauges (load, clock, modelled power, speed).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# vLLM's own buckets (vllm/v1/metrics/loggers.py), so dashboards built for vLLM read these unchanged
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
# vLLM's ``vllm:engine_sleep_state`` label values: level-1 sleep offloads weights, level 2 discards them
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


@dataclass(frozen=True)
class Snapshot:
    """The instance's state at one scrape (counts since start; load, clock and power modelled)."""

    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens: int
    generation_tokens: int
    preemptions: int
    load_rps: float
    sm_clock_mhz: int
    power_w: float
    speed: float
    finished: Mapping[str, int] = field(default_factory=dict)  # by finished_reason: stop, length, abort
    sleep_state: str = "awake"  # vLLM's sleep_state label: awake, or weights_offloaded asleep at level 1


class EmulatorMetrics:
    """One registry per emulator: histograms observed as requests finish, the rest read from a ``Snapshot``."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._snapshot: Snapshot | None = None

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            h = Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry)
            return h.labels(model_name)

        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TPOT_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS
        )
        self.registry.register(_Live(self))

    def observe(self, ttft_s: float, tpot_s: float | None, e2e_s: float, queue_s: float) -> None:
        self.ttft.observe(ttft_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)
        self.e2e.observe(e2e_s)
        self.queue.observe(queue_s)

    def text(self, snapshot: Snapshot) -> bytes:
        self._snapshot = snapshot
        return generate_latest(self.registry)


class _Live:
    """A collector of the snapshot's gauges and counters (computed per scrape, not kept as series)."""

    def __init__(self, owner: EmulatorMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        s, name = self.owner._snapshot, self.owner.model_name
        if s is None:
            return
        gauges = (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", s.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_cache_usage),
            ("wattgate_sim_load_rps", "Modelled arrival rate over the load window (req per simulated s).", s.load_rps),
            ("wattgate_sim_sm_clock_mhz", "SM clock the instance runs at (the slowest of its GPUs).", s.sm_clock_mhz),
            ("wattgate_sim_power_watts", "Modelled instance power, all its GPUs (source=modelled).", s.power_w),
            ("wattgate_sim_speed", "Time compression: simulated seconds per wall second.", s.speed),
        )
        for metric, doc, value in gauges:
            g = GaugeMetricFamily(metric, doc, labels=["model_name"])
            g.add_metric([name], float(value))
            yield g
        counters = (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions),
        )
        for metric, doc, value in counters:
            c = CounterMetricFamily(metric, doc, labels=["model_name"])
            c.add_metric([name], float(value))
            yield c
        done = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "finished_reason"],
        )
        for reason in ("stop", "length", "abort"):
            done.add_metric([name, reason], float(s.finished.get(reason, 0)))
        yield done
        sleep = GaugeMetricFamily(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping.",
            labels=["model_name", "sleep_state"],
        )
        for state in SLEEP_STATES:
            sleep.add_metric([name, state], float(state == s.sleep_state))
        yield sleep
