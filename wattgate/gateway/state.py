"""The gateway's run-time state, built once in the lifespan: the HTTP client, instances, predictor, metrics, store.

Background tasks live here too: discovering static backends' models, active health probing, and
applying the Redis instance registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from wattgate.classifier.api import MaxTokensPredictor, Predictor
from wattgate.gateway.energy_meter import EnergyMeter
from wattgate.gateway.http import FORWARDED_REQUEST_HEADERS
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.gateway.routing import (
    Ejection,
    Instance,
    InstanceSpec,
    may_eject,
    plan_limits,
    plan_routes,
    plan_weights,
    record_failure,
    record_success,
)
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.gateway.transport import FastTransport
from wattgate.planner.contract import InstanceRecord, Observation, Plan

log = logging.getLogger("wattgate.gateway")


class PredictorSlot:
    """Holds the predictor in use; ``swap`` replaces it at run time (the classifier watcher calls it)."""

    def __init__(self, predictor: Predictor) -> None:
        self.current = predictor
        self.version: str = "initial"

    def swap(self, predictor: Predictor, version: str = "") -> None:
        self.current = predictor
        self.version = version or self.version
        log.info("classifier predictor swapped (version %s)", self.version)


def spec_from_backend(b: BackendSpec) -> InstanceSpec:
    return InstanceSpec(
        id=b.id,
        base_url=b.url,
        models=frozenset(b.models),
        pool=b.pool,
        max_concurrency=b.max_concurrency,
        api_key=b.api_key,
        source="static",
        health_path=b.health_path,
    )


def spec_from_record(r: InstanceRecord) -> InstanceSpec:
    base = r.base_url.rstrip("/")
    return InstanceSpec(
        id=r.id,
        base_url=base[:-3] if base.endswith("/v1") else base,
        models=frozenset([r.model]),
        pool=r.pool or None,
        max_concurrency=max(1, r.max_concurrency),
        api_key=os.environ.get(r.api_key_env) if r.api_key_env else None,
        source="registry",
        ready=r.ready,
    )


class Recorder(Protocol):
    """Where load windows and observations go (``store.RedisStore``); absent without a Redis URL."""

    def record_load(self, pool: str, now: float, input_tokens: int, output_tokens: int) -> None: ...

    def record_observation(self, obs: Observation) -> None: ...


@dataclass
class GatewayState:
    settings: GatewaySettings
    client: httpx.AsyncClient
    metrics: GatewayMetrics
    predictor: PredictorSlot
    instances: dict[str, Instance] = field(default_factory=dict)
    store: Recorder | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # the proxy sends through the client's transport directly: no cookie jar, auth or redirect layers,
    # which a proxy must not have anyway (a cookie from one user's response must never reach another's)
    transport: httpx.AsyncBaseTransport | None = None
    timeouts: dict[str, float | None] = field(default_factory=dict)  # streams: the head within read_timeout_s
    # non-streamed requests: the answer's head comes when the whole answer is ready, so only the request's
    # deadline bounds the wait for it (``head``: None); read_timeout_s holds between the body's bytes
    whole_timeouts: dict[str, float | None] = field(default_factory=dict)
    # request type -> pools to try, from the planner's current plan (empty: no plan, spill chain alone)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plan_version: int | None = None
    weights: dict[str, float] = field(default_factory=dict)  # instance id -> routing weight, from the plan
    limits: dict[str, float] = field(default_factory=dict)  # instance id -> admission limit, from the plan
    # fixed instance id -> the pool the plan has it serve: routing follows the plan at once, whatever the
    # registry record (its agent re-publishes it a moment later) says
    plan_pools: dict[str, str] = field(default_factory=dict)
    records: dict[str, InstanceRecord] = field(default_factory=dict)  # the registry as last applied
    forward_headers: frozenset[bytes] = FORWARDED_REQUEST_HEADERS  # the client headers backends get
    energy: EnergyMeter | None = None  # with Redis: per-request energy from the agents' counters

    @classmethod
    def build(cls, settings: GatewaySettings, predictor: Predictor | None = None) -> GatewayState:
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.write_timeout_s,
            pool=settings.pool_timeout_s,
        )
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry_s,
        )
        transport = FastTransport(limits)
        client = httpx.AsyncClient(
            transport=transport, timeout=timeout, limits=limits, trust_env=False, follow_redirects=False
        )
        state = cls(settings, client, GatewayMetrics(), PredictorSlot(predictor or MaxTokensPredictor(settings.edges)))
        state.transport = transport
        state.timeouts = timeout.as_dict()
        state.whole_timeouts = {**state.timeouts, "head": None}
        state.forward_headers = FORWARDED_REQUEST_HEADERS | {h.encode("latin-1") for h in settings.forward_headers}
        for b in settings.backends:
            state.instances[b.id] = Instance(spec_from_backend(b))
        state.count_instances()
        return state

    def models(self) -> list[str]:
        return sorted({m for i in self.instances.values() for m in i.spec.models})

    def energy_labels(self) -> dict[str, tuple[str, str]]:
        """Instance id -> (model, pool): the labels of its idle energy."""
        return {k: (",".join(sorted(i.spec.models)) or "-", i.spec.pool or "-") for k, i in self.instances.items()}

    def models_unknown(self) -> list[str]:
        """Ids of static backends that do not answer and whose models are not known (no ``model`` hint, and no
        ``/v1/models`` answer yet): a request for a model nobody else serves may be theirs."""
        return [
            i.id for i in self.instances.values() if i.spec.source == "static" and not i.spec.models and not i.healthy
        ]

    def static_summary(self) -> str:
        """For the ready log line: how many static backends answer their health probe, and which do not."""
        static = [i for i in self.instances.values() if i.spec.source == "static"]
        down = [f"{i.id} ({i.spec.base_url})" for i in static if not i.healthy]
        text = f"{len(static) - len(down)} of {len(static)} static backend(s) reachable"
        return text + (f"; not answering: {', '.join(down)}" if down else "")

    def any_ready(self) -> bool:
        now = time.monotonic()
        return any(i.routable(now) and i.spec.models for i in self.instances.values())

    def apply_registry(self, records: list[InstanceRecord]) -> None:
        """Replace the registry-sourced instances, keeping the live counters of those that stay."""
        seen = set()
        self.records = {}
        for rec in records:
            if rec.id in self.instances and self.instances[rec.id].spec.source == "static":
                log.warning("registry instance %s has the id of a static backend; ignored", rec.id)
                continue
            seen.add(rec.id)
            self.records[rec.id] = rec
            spec = self._spec(rec)
            inst = self.instances.get(rec.id)
            if inst is None:
                inst = self.instances[rec.id] = Instance(spec)
                inst.weight = self.weights.get(rec.id, 1.0)
                inst.limit = self.limits.get(rec.id, math.inf)
                log.info("instance %s appeared (%s, pool %s, %s)", rec.id, spec.base_url, rec.pool, rec.state)
            elif inst.spec != spec:
                if spec.ready and not inst.spec.ready:
                    inst.healthy = True  # the agent registers ready only once its own health wait passed
                    inst.ejected_until, inst.consecutive_failures = 0.0, 0
                inst.spec = spec
        for iid in [k for k, v in self.instances.items() if v.spec.source == "registry" and k not in seen]:
            log.info("instance %s disappeared", iid)
            del self.instances[iid]
            with contextlib.suppress(KeyError):  # no series left behind for instances that are gone
                self.metrics.in_flight.remove(iid)
        self.count_instances()

    def _spec(self, rec: InstanceRecord) -> InstanceSpec:
        spec = spec_from_record(rec)
        pool = self.plan_pools.get(rec.id)
        return spec if pool is None else dataclasses.replace(spec, pool=pool)

    def apply_plan(self, plan: Plan | None) -> None:
        """Route each request type as ``plan.serves`` says, send fixed instances the types of the pool the
        plan gives them, weigh instances by their planned load and give them its admission limits (None: no
        plan, the spill chain alone, registry pools, equal weights, no limits)."""
        version = None if plan is None else plan.version
        if version == self.plan_version:
            return
        self.routes = plan_routes(plan.serves) if plan is not None else {}
        # standby instances (asleep, never routed) carry no load and do not dilute their pool's weights
        active = [] if plan is None else [i for i in plan.instances if not i.standby]
        self.weights = plan_weights((i.id, i.pool, i.load_rps) for i in active) if plan is not None else {}
        self.limits = plan_limits(((i.id, i.load_rps) for i in active), self.settings.admission_window_s)
        self.plan_pools = plan.fixed_pools() if plan is not None else {}
        for iid, inst in self.instances.items():
            inst.weight = self.weights.get(iid, 1.0)
            inst.limit = self.limits.get(iid, math.inf)
            if iid in self.records:
                inst.spec = self._spec(self.records[iid])
        self.plan_version = version
        self.metrics.plan_version.set(version or 0)
        if plan is None:
            log.info("no plan in redis: routing by the spill chain alone")
        else:
            moved = {t: pools[0] for t, pools in sorted(self.routes.items()) if pools[0] != t}
            log.info("routing by plan %s%s", version, f" (types sent to another pool: {moved})" if moved else "")

    def count_instances(self) -> None:
        now = time.monotonic()
        counts: dict[tuple[str, str], int] = {(s, r): 0 for s in ("static", "registry") for r in ("true", "false")}
        for i in self.instances.values():
            counts[(i.spec.source, "true" if i.routable(now) else "false")] += 1
        for (source, routable), n in counts.items():
            self.metrics.instances.labels(source, routable).set(n)

    # -- passive ejection (outlier detection) ---------------------------------------------------
    def note_failure(self, inst: Instance, connect_error: bool) -> None:
        """A failure that is the instance's (the proxy does not call this for one a request reproduced on a
        second instance). A connect error ejects at once, ``eject_after_failures`` in a row do too,
        unless the ejection cap says no (``routing.record_failure``)."""
        s = self.settings
        pool = self.pool_of(inst)
        now = time.monotonic()
        done = record_failure(
            inst, pool, now, connect_error, s.eject_after_failures, s.eject_cooldown_s, s.max_ejection_percent
        )
        if done is Ejection.CAPPED:
            self.metrics.ejections_capped.labels(inst.id).inc()
            log.warning(
                "instance %s not ejected: %g%% of its pool is ejected already (max_ejection_percent)",
                inst.id,
                s.max_ejection_percent,
            )
        elif done is Ejection.EJECTED:
            self.metrics.ejections.labels(inst.id).inc()
            log.warning("instance %s ejected for %.1f s", inst.id, s.eject_cooldown_s)

    def pool_of(self, inst: Instance) -> list[Instance]:
        """The ready instances of ``inst``'s pool (itself included)."""
        return [i for i in self.instances.values() if i.spec.pool == inst.spec.pool and i.spec.ready]

    def may_eject(self, inst: Instance, now: float) -> bool:
        """Envoy's rule (``routing.may_eject``) over ``inst``'s pool."""
        return may_eject(inst, self.pool_of(inst), now, self.settings.max_ejection_percent)

    @staticmethod
    def note_success(inst: Instance) -> None:
        record_success(inst)

    # -- active probing and discovery -----------------------------------------------------------
    async def probe(self, inst: Instance) -> None:
        spec = inst.spec
        try:
            if not spec.models:
                await self._discover(inst)
            resp = await self.client.get(spec.base_url + spec.health_path, timeout=self.settings.health_timeout_s)
            healthy = resp.status_code < 500
        except httpx.HTTPError:
            healthy = False
        if healthy != inst.healthy:
            log.warning("instance %s is %s", spec.id, "healthy again" if healthy else "failing its health probe")
        inst.healthy = healthy
        if healthy and inst.ejected_until > time.monotonic():  # Envoy: successful_active_health_check_uneject_host
            inst.ejected_until = 0.0
            log.warning("instance %s passed its health probe: back from ejection", spec.id)

    async def _discover(self, inst: Instance) -> None:
        headers = {"authorization": f"Bearer {inst.spec.api_key}"} if inst.spec.api_key else {}
        resp = await self.client.get(
            inst.spec.base_url + "/v1/models", headers=headers, timeout=self.settings.health_timeout_s
        )
        if resp.status_code != 200:
            log.warning("backend %s: GET /v1/models answered %s", inst.spec.base_url, resp.status_code)
            return
        try:
            models = frozenset(str(m["id"]) for m in resp.json()["data"])
        except (ValueError, KeyError, TypeError):
            log.warning("backend %s: /v1/models is not an OpenAI model list", inst.spec.base_url)
            return
        inst.spec = dataclasses.replace(inst.spec, models=models)
        log.info("backend %s serves %s", inst.spec.base_url, ", ".join(sorted(models)))

    async def probe_all(self) -> None:
        # a starting or draining instance is not routed to: a probe of it would only leave a stale verdict
        await asyncio.gather(*(self.probe(i) for i in list(self.instances.values()) if i.spec.ready))
        self.count_instances()

    async def run_prober(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.probe_all()
