"""The README promises issue 21 broke by hand, as text edits (each must make a named test fail).

Each ``Promise`` replaces ``old`` (which must occur exactly once in ``module``) with ``new`` and runs
``tests``; ``run.py`` reports the verdict and the first failing test. The test that kills each one is
named in the README's mutation-testing section.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Promise:
    name: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...]


GW = "tests/gateway/"
AG = "tests/agent/"

PROMISES: tuple[Promise, ...] = (
    Promise(
        "the client's key never reaches a backend (authorization allowed through)",
        "wattgate/gateway/http.py",
        'b"traceparent", b"tracestate", b"baggage",',
        'b"traceparent", b"tracestate", b"baggage", b"authorization", b"api-key",',
        (GW + "test_headers.py", GW + "test_errors.py"),
    ),
    Promise(
        "api-key: header accepted as the client key",
        "wattgate/gateway/http.py",
        '    return header(scope, b"api-key") or ""',
        '    return ""',
        (GW + "test_headers.py", GW + "test_errors.py"),
    ),
    Promise(
        "engine drain waits for in-flight requests (ProcessEngine.drain returns at once)",
        "wattgate/agent/engines/process.py",
        "        deadline = time.monotonic() + timeout_s\n        while self.running():",
        "        deadline = time.monotonic() + timeout_s\n        while False:",
        (AG + "test_drain.py", AG + "test_engines.py"),
    ),
    Promise(
        "engine stop drains first (ProcessEngine.stop skips the drain)",
        "wattgate/agent/engines/process.py",
        "        if drain_timeout_s > 0:\n            self.drain(drain_timeout_s)",
        "        pass",
        (AG + "test_drain.py", AG + "test_engines.py"),
    ),
    Promise(
        "the actuator drains an instance before stopping it",
        "wattgate/agent/actuator.py",
        "        r.engine.drain(self.timeouts.drain_s)\n",
        "",
        (AG + "test_drain.py", AG + "test_engines.py", AG + "test_agent_loop.py"),
    ),
    Promise(
        "gateways get time to notice draining before the in-flight count is read",
        "wattgate/agent/actuator.py",
        "self.stop_event.wait(self.timeouts.drain_notice_s if r.engine.managed else 0)",
        "pass",
        (AG + "test_drain.py", AG + "test_engines.py", AG + "test_agent_loop.py"),
    ),
    Promise(
        "shutdown drains managed engines",
        "wattgate/agent/actuator.py",
        "            r.engine.stop(self.timeouts.drain_s)",
        "            r.engine.stop(0)",
        (AG + "test_drain.py", AG + "test_engines.py", AG + "test_agent_loop.py"),
    ),
    Promise(
        "never touches clocks it did not lock (reset of an unlocked GPU)",
        "wattgate/agent/clocks.py",
        "        if index not in self._locked:\n            return\n",
        "",
        (AG + "test_clocks.py", AG + "test_agent_loop.py", AG + "test_engines.py"),
    ),
    Promise(
        "never touches clocks it did not lock (reset_all resets every GPU)",
        "wattgate/agent/clocks.py",
        "for index in sorted(self._locked):",
        "for index in sorted(self._gpus):",
        (AG + "test_clocks.py", AG + "test_agent_loop.py", AG + "test_engines.py"),
    ),
    Promise(
        "the last plan stays in force while Redis is away",
        "wattgate/gateway/store.py",
        'what="plan", stale=lambda _: None)',
        'what="plan", stale=lambda flag: apply(None) if flag else None)',
        (GW + "test_store.py", GW + "test_redis.py", GW + "test_plan_routing.py"),
    ),
    Promise(
        "no answer within the request's deadline is a 504",
        "wattgate/gateway/proxy.py",
        'raise ApiError(504, message, type_="server_error", code="deadline_exceeded")',
        'raise ApiError(502, message, type_="server_error", code="deadline_exceeded")',
        (GW + "test_timeouts.py", GW + "test_failures.py"),
    ),
    Promise(
        "instances without a pool take requests only after the pool-specific ones",
        "wattgate/gateway/routing.py",
        "members = [i for i in usable if i.spec.pool == pool]",
        "members = [i for i in usable if i.spec.pool in (pool, None)]",
        (GW + "test_routing.py", GW + "test_plan_routing.py", GW + "test_failures.py"),
    ),
    Promise(
        "embeddings go to the least-loaded instance",
        "wattgate/gateway/routing.py",
        "best = min(usable, key=_load)",
        "best = max(usable, key=_load)",
        (GW + "test_routing.py", GW + "test_plan_routing.py", GW + "test_failures.py"),
    ),
    Promise(
        "until the agent has seen a plan it starts and stops nothing",
        "wattgate/agent/agent.py",
        "return self.plan.for_node(self.node) if self.plan is not None else None",
        "return self.plan.for_node(self.node) if self.plan is not None else []",
        (AG + "test_agent_loop.py",),
    ),
    Promise(
        "static backends with unknown models are asked again by the prober",
        "wattgate/gateway/state.py",
        "            if not spec.models:\n                await self._discover(inst)\n",
        "",
        (GW + "test_discovery.py", GW + "test_cli.py"),
    ),
    Promise(
        "request_usage_in_stream: false sends the client's body untouched",
        "wattgate/gateway/proxy.py",
        "if stream and not wants_usage and state.settings.request_usage_in_stream:",
        "if stream and not wants_usage:",
        (GW + "test_headers.py", GW + "test_openai_client.py", GW + "test_redis.py"),
    ),
    Promise(
        "ejections are counted",
        "wattgate/gateway/state.py",
        "        self.metrics.ejections.labels(inst.id).inc()\n",
        "",
        (GW + "test_failures.py",),
    ),
    Promise(
        "no-capacity refusals are counted",
        "wattgate/gateway/upstream.py",
        "    state.metrics.no_capacity.labels(pool).inc()\n",
        "",
        (GW + "test_failures.py",),
    ),
    Promise(
        "restart back-off is capped at 60 s",
        "wattgate/agent/actuator.py",
        "MAX_BACKOFF_S = 60.0",
        "MAX_BACKOFF_S = 120.0",
        (AG + "test_drain.py", AG + "test_engines.py"),
    ),
    Promise(
        "the heartbeat's TTL is 15 s",
        "wattgate/planner/contract.py",
        "HEARTBEAT_TTL_S = 15",
        "HEARTBEAT_TTL_S = 60",
        (AG + "test_agent_loop.py",),
    ),
    Promise(
        "--gpu-indices manages only those GPUs",
        "wattgate/agent/main.py",
        "lib.gpus(list(s.gpu_indices) if s.gpu_indices else None)",
        "lib.gpus(None)",
        (AG + "test_agent_process.py",),
    ),
    Promise(
        "a slow Redis is noticed (command timeouts), serving goes on",
        "wattgate/gateway/store.py",
        "url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30",
        "url, health_check_interval=30",
        (GW + "test_store.py", GW + "test_redis.py"),
    ),
    Promise(
        "the dashboard's SLO attainment is the share of streams within the TTFT target",
        "wattgate/gateway/dashboard.py",
        'return cell["ttft_ok"] / cell["ttft_count"] if cell["ttft_count"] else None',
        'return 1 - cell["ttft_ok"] / cell["ttft_count"] if cell["ttft_count"] else None',
        (GW + "test_dashboard_page.py",),
    ),
)
