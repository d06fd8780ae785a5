"""The routing inside LiteLLM, without LiteLLM: deployments as registry instances, the pick, and the records.

LiteLLM hands over the deployments of a model group that it finds healthy (none in its own cooldown).
Each is matched to an instance of wattgate's registry: ``model_info.wattgate_instance`` names the
record, else the deployment's ``api_base`` is compared with the records' ``base_url`` (``/v1`` and a
trailing slash ignored). Deployments without a record take no request while wattgate routes: an
instance the agent stopped leaves the registry but stays in LiteLLM's config. The request is
classified by the ``Predictor``, the plan gives its type's pools (``plan_routes``) and the gateway's
``choose`` picks the instance, so the spill chain, concurrency bounds, planned-load weights and admission limits, panic
routing and passive ejection with its cap (``record_failure``) are the gateway's. A retry of the same
request (LiteLLM's ``num_retries``, or a fallback group) goes to an instance it has not tried yet. Who
is blamed is the gateway's rule too: a connect error, a timeout or a broken transfer is the instance's
at once; a 5xx answer or a connection closed without one is judged by what follows: the request's
next attempt answered, so the failed instance is blamed; it failed too, so the request is (nobody is
blamed); no attempt followed within ``JUDGE_AFTER_S``, so the failed instance is.

Each request carries a ticket id in its LiteLLM metadata (``TICKET_KEY``); the ticket holds the
prediction and the attempt in flight, so the success and failure callbacks release the instance and
record the observation. Every attempt counts in the load window of its request type when it starts
and leaves an observation when it ends, as in the gateway. ``pick`` answers a ``Fallback`` reason
instead of deployments when nothing was read from Redis yet, none of the group's deployments is
registered (a cloud model behind the same proxy: not classified, not recorded), or there is no plan:
LiteLLM's own strategy picks then; without a plan the load and observations are still recorded, so
the planner has the load to make its first plan from.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import openai

from wattgate.classifier.api import MaxTokensPredictor, Prediction, Predictor, requested_max_tokens
from wattgate.classifier.observe import observation
from wattgate.gateway.routing import (
    DEFAULT_ADMISSION_WINDOW_S,
    DEFAULT_SPILL_ANY,
    Ejection,
    Instance,
    InstanceSpec,
    choose,
    expected_output_tokens,
    plan_limits,
    plan_routes,
    plan_weights,
    record_failure,
    record_success,
    request_type,
)
from wattgate.planner.contract import InstanceRecord, Observation, Plan
from wattgate.profiles.classes import ClassEdges, RequestType

log = logging.getLogger("wattgate.litellm")

TICKET_KEY = "wattgate_ticket"  # key of the request's LiteLLM metadata holding its ticket id
INSTANCE_HINT = "wattgate_instance"  # optional model_info key: the registry id of a deployment's instance
ANY_MODEL = "*"  # LiteLLM has narrowed the deployments to the request's model group already
# what the classifier reads of a request besides its messages (LiteLLM passes them as keyword arguments)
_BODY_KEYS = ("max_tokens", "max_completion_tokens", "tools", "functions", "response_format", "stop", "temperature")
_FALLBACK = MaxTokensPredictor()
_SWEEP_EVERY = 1024  # tickets opened between two sweeps of forgotten ones
JUDGE_AFTER_S = 5.0  # a 5xx that no retry followed for this long is its instance's


class Fallback(enum.StrEnum):
    """Why LiteLLM's own strategy picks the deployment."""

    NO_REDIS = "no Redis URL configured (WATTGATE_REDIS_URL)"
    NOT_READ = "nothing read from Redis yet (unreachable since start?)"
    UNREGISTERED = "none of the model group's deployments is in the instance registry"
    NO_PLAN = "no plan in Redis yet"


class Failure(enum.Enum):
    """How a failed attempt counts against its instance (the gateway's passive-ejection rule)."""

    NONE = "none"  # a client error (4xx), or LiteLLM's own: says nothing of the instance
    COUNTED = "counted"  # a timeout or a broken transfer: the instance's, ejects after a run of them
    DEFERRED = "deferred"  # a 5xx answer or a connection closed without one: judged by the next attempt
    CONNECT = "connect"  # the instance could not be reached: the instance's, ejects at once


class Recorder(Protocol):
    """Where load windows and observations go (``gateway.store.RedisStore``: buffered, never blocking)."""

    def record_load(self, pool: str, now: float, input_tokens: int, output_tokens: int) -> None: ...

    def record_observation(self, obs: Observation) -> None: ...


@dataclass(eq=False)
class Ticket:
    """One request on its way through LiteLLM: what was predicted, what was tried, the attempt in flight."""

    prediction: Prediction
    rtype: RequestType
    work_tokens: int  # input plus expected output, the gateway's measure of outstanding work
    max_tokens: int | None
    model: str  # the served model (its registry record's), the classifier's and the observations' name
    opened_at: float  # monotonic
    tried: set[str] = field(default_factory=set)
    instance: Instance | None = None  # the attempt in flight, when wattgate picked it
    deployment_id: str | None = None
    pool: str = "-"
    failed: list[Instance] = field(default_factory=list)  # 5xx / closed unanswered, not judged yet
    failed_at: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One finished attempt, as LiteLLM's success or failure callback tells it (timings measured by LiteLLM)."""

    request_id: str
    deployment: Mapping[str, Any] | None  # the deployment called (``model_info`` and ``litellm_params.api_base``)
    status: int
    failure: Failure = Failure.NONE
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    tbt_s: float | None = None


def failure_of(exc: BaseException | None) -> tuple[Failure, int]:
    """How an exception LiteLLM raised for an attempt counts against the instance, and the status to record:
    connect errors eject at once (502); timeouts (504) and broken transfers (502) count at once; 5xx answers
    and connections closed without an answer (502) are judged later; the rest (4xx, errors of LiteLLM's
    own) say nothing of the instance."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 16:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    # litellm's aiohttp transport reports a reset of an open (kept-alive) connection as httpx.ConnectError too,
    # and a connection closed without an answer as httpx.ReadError
    dropped = any(
        isinstance(e, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | httpx.RemoteProtocolError)
        for e in chain
    ) or any(type(e).__name__ == "ServerDisconnectedError" for e in chain)
    if not dropped and any(
        isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | ConnectionRefusedError) for e in chain
    ):
        return Failure.CONNECT, 502
    status = next((s for e in chain if isinstance(s := getattr(e, "status_code", None), int)), None)
    if status == 408 or any(isinstance(e, httpx.TimeoutException | openai.APITimeoutError) for e in chain):
        return Failure.COUNTED, 504
    if dropped:
        return Failure.DEFERRED, 502
    if any(isinstance(e, httpx.HTTPError | openai.APIConnectionError) for e in chain):
        return Failure.COUNTED, 502
    if status is not None and status >= 500:
        return Failure.DEFERRED, status
    return Failure.NONE, status or 500


def metadata_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's LiteLLM metadata (``litellm_metadata`` on the routes that use it), made if absent."""
    key = "litellm_metadata" if "litellm_metadata" in kwargs else "metadata"
    meta = kwargs.get(key)
    if not isinstance(meta, dict):
        meta = kwargs[key] = {}
    return meta


def deployment_id(deployment: Mapping[str, Any]) -> str:
    return str((deployment.get("model_info") or {}).get("id") or "")


def base_url(url: str) -> str:
    """A server's base URL as routing compares them: lower case, no trailing slash, no ``/v1``."""
    u = url.strip().rstrip("/").lower()
    return u[:-3] if u.endswith("/v1") else u


class EnergyRouting:
    """The live view LiteLLM's callbacks route by: registry instances, the plan's routes and weights, tickets."""

    def __init__(
        self,
        predictor: Predictor,
        edges: ClassEdges,
        *,
        eject_after_failures: int,
        eject_cooldown_s: float,
        ticket_ttl_s: float,
        max_ejection_percent: float = 10.0,
        panic_threshold_percent: float = 50.0,
        admission_window_s: float = DEFAULT_ADMISSION_WINDOW_S,
        spill_any: bool = DEFAULT_SPILL_ANY,
        keep_text_slots: bool = True,
        recorder: Recorder | None = None,
    ) -> None:
        self.predictor = predictor  # replaced at run time when a newer classifier is published
        self.edges = edges
        self.eject_after_failures = eject_after_failures
        self.eject_cooldown_s = eject_cooldown_s
        self.ticket_ttl_s = ticket_ttl_s
        self.max_ejection_percent = max_ejection_percent
        self.panic_below = panic_threshold_percent / 100
        self.admission_window_s = admission_window_s  # the gateway's (routing.plan_limits)
        self.spill_any = spill_any  # the gateway's work-conserving spill (routing.choose)
        self.keep_text_slots = keep_text_slots  # the gateway's classifier_text_slots
        self.recorder = recorder
        self.instances: dict[str, Instance] = {}  # registry id -> instance
        self.plan_version: int | None = None
        self.routes: dict[str, tuple[str, ...]] = {}
        self.weights: dict[str, float] = {}
        self.limits: dict[str, float] = {}  # registry id -> admission limit, from the plan
        self.plan_pools: dict[str, str] = {}  # fixed instance id -> the pool the plan has it serve
        self.tickets: dict[str, Ticket] = {}
        self.registry_read = False  # the registry was read from Redis at least once
        self._models: dict[str, str] = {}  # registry id -> the model its record serves
        self._records: dict[str, InstanceRecord] = {}  # the registry as last applied
        self._by_url: dict[str, Instance] = {}
        self._by_deployment: dict[str, Instance | None] = {}  # LiteLLM deployment id -> instance (cache)
        self._unjudged: dict[str, Ticket] = {}  # tickets holding a 5xx no later attempt has judged yet
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count(1)

    # -- what Redis says ------------------------------------------------------------------------------
    def apply_registry(self, records: Iterable[InstanceRecord]) -> None:
        """Replace the instances, keeping the live counters (in flight, failures, ejection) of those that stay."""
        kept: dict[str, Instance] = {}
        self._records = {}
        for rec in records:
            self._records[rec.id] = rec
            spec = self._spec(rec)
            inst = self.instances.get(rec.id)
            if inst is None:
                inst = Instance(spec)
                inst.weight = self.weights.get(rec.id, 1.0)
                inst.limit = self.limits.get(rec.id, math.inf)
                log.info("instance %s appeared (%s, pool %s, %s)", rec.id, spec.base_url, rec.pool, rec.state)
            elif inst.spec != spec:
                if spec.ready and not inst.spec.ready:  # ready again: a fresh start, as in the gateway
                    inst.ejected_until, inst.consecutive_failures = 0.0, 0
                inst.spec = spec
            kept[rec.id] = inst
            self._models[rec.id] = rec.model
        for gone in self.instances.keys() - kept.keys():
            log.info("instance %s disappeared", gone)
            self._models.pop(gone, None)
        self.instances = kept
        self._by_url = {i.spec.base_url: i for i in kept.values()}
        self._by_deployment.clear()
        self.registry_read = True

    def _spec(self, rec: InstanceRecord) -> InstanceSpec:
        """An instance as routing sees it; a fixed instance (a server wattgate does not manage) serves the pool
        the plan gives it at once, whatever its record says (its agent re-publishes it a moment later)."""
        return InstanceSpec(
            id=rec.id,
            base_url=base_url(rec.base_url),
            models=frozenset({ANY_MODEL}),
            pool=self.plan_pools.get(rec.id) or rec.pool or None,
            max_concurrency=max(1, rec.max_concurrency),
            api_key=None,  # LiteLLM holds the deployments' keys
            source="registry",
            ready=rec.ready,
        )

    def apply_plan(self, plan: Plan | None) -> None:
        """Route each request type as ``plan.serves`` says, send fixed instances the types of the pool the plan
        gives them, and weigh instances by their planned load (None: the spill chain, registry pools)."""
        version = None if plan is None else plan.version
        if version == self.plan_version:
            return
        self.routes = plan_routes(plan.serves) if plan is not None else {}
        self.weights = plan_weights((i.id, i.pool, i.load_rps) for i in plan.instances) if plan is not None else {}
        active = [] if plan is None else [i for i in plan.instances if not i.standby]
        self.limits = plan_limits(((i.id, i.load_rps) for i in active), self.admission_window_s)
        self.plan_pools = plan.fixed_pools() if plan is not None else {}
        for iid, inst in self.instances.items():
            inst.weight = self.weights.get(iid, 1.0)
            inst.limit = self.limits.get(iid, math.inf)
            if iid in self._records:
                inst.spec = self._spec(self._records[iid])
        self.plan_version = version
        if plan is not None:
            moved = {t: pools[0] for t, pools in sorted(self.routes.items()) if pools[0] != t}
            log.info("routing by plan %s%s", version, f" (types sent to another pool: {moved})" if moved else "")

    # -- the request path ------------------------------------------------------------------------------
    def pick(
        self,
        model: str,
        deployments: Sequence[dict[str, Any]],
        messages: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        now: float,
        wall: float,
    ) -> list[dict[str, Any]] | Fallback:
        """The one deployment to call (none: nothing can take the request now), or why LiteLLM picks.
        ``now`` is monotonic, ``wall`` unix time (load windows). Requests of a group with no registered
        deployment (a cloud model behind the same proxy) are neither classified nor recorded."""
        if not self.registry_read:
            return Fallback.NOT_READ
        registered = [(inst, d) for d in deployments if (inst := self._instance_of(d)) is not None]
        if not registered:
            return Fallback.UNREGISTERED
        meta = metadata_of(kwargs)
        token = meta.get(TICKET_KEY)
        ticket = self.tickets.get(token) if isinstance(token, str) else None
        if ticket is None:
            # the classifier knows models by the name they serve under (what observations record), not by
            # LiteLLM's group alias: the registry says it
            served = self._models.get(registered[0][0].id, model)
            token, ticket = self._open(served, messages, kwargs, now)
            meta[TICKET_KEY] = token
        else:
            self._release(ticket)  # a retry: the attempt before it is over, whether or not its callback ran
        if self.recorder is not None:
            p = ticket.prediction
            self.recorder.record_load(ticket.rtype.name, wall, p.input_tokens, ticket.work_tokens - p.input_tokens)
        if self.plan_version is None:
            return Fallback.NO_PLAN
        skip = _skipped(kwargs)
        usable: dict[str, tuple[Instance, dict[str, Any]]] = {}
        for inst, d in registered:
            if deployment_id(d) not in skip:
                usable.setdefault(inst.id, (inst, d))
        insts = [i for i, _ in usable.values()]
        rule = (self.routes, self.panic_below, self.spill_any)
        picked = choose(insts, ANY_MODEL, ticket.rtype, now, ticket.tried, *rule)
        if picked is None and ticket.tried:  # every instance was tried: LiteLLM asked for one more attempt
            picked = choose(insts, ANY_MODEL, ticket.rtype, now, frozenset(), *rule)
        if picked is None:
            return []
        inst, pool = picked
        chosen = usable[inst.id][1]
        ticket.instance, ticket.deployment_id, ticket.pool = inst, deployment_id(chosen), pool
        ticket.tried.add(inst.id)
        inst.in_flight += 1
        inst.outstanding_tokens += ticket.work_tokens
        return [chosen]

    def finish(self, token: str | None, outcome: Outcome, now: float, wall: float) -> None:
        """End the attempt ``outcome`` tells of: release its instance, apply the ejection rule, record it."""
        ticket = self.tickets.get(token) if token else None
        inst = self._instance_of(outcome.deployment) if outcome.deployment is not None else None
        pool = (inst.spec.pool or "-") if inst is not None else "-"
        if ticket is not None and ticket.instance is not None:
            same = outcome.deployment is None or deployment_id(outcome.deployment) == ticket.deployment_id
            if same:  # else a stale attempt: its retry was picked before this callback ran, and released it
                inst, pool = ticket.instance, ticket.pool
                self._release(ticket)
        if inst is not None:
            self._judge(ticket, inst, outcome, now)
        if ticket is None or token is None:
            return
        if outcome.status < 400:
            del self.tickets[token]  # failed ones stay for a retry, until swept
            self._unjudged.pop(token, None)
        elif ticket.failed:
            self._unjudged[token] = ticket
        if self.recorder is None or (inst is None and outcome.deployment is None):
            return  # no instance was reached: nothing to observe (as in the gateway)
        instance = inst.id if inst is not None else f"litellm:{deployment_id(outcome.deployment or {})[:12]}"
        model = self._models.get(inst.id, ticket.model) if inst is not None else ticket.model
        self.recorder.record_observation(
            attempt_observation(
                ticket,
                outcome,
                pool=pool,
                instance=instance,
                model=model,
                wall=wall,
                keep_text_slots=self.keep_text_slots,
            )
        )

    def judge_unanswered(self, now: float) -> None:
        """Blame the instance of a 5xx (or a connection closed unanswered) that no retry followed within
        ``JUDGE_AFTER_S``: the request had no second instance to try (the adapter calls this every second)."""
        for token, ticket in list(self._unjudged.items()):
            if ticket.instance is None and now - ticket.failed_at >= JUDGE_AFTER_S:
                del self._unjudged[token]
                if len(ticket.failed) == 1:
                    self._blame(ticket.failed[0], now, connect=False)
                ticket.failed.clear()

    # -- internals -------------------------------------------------------------------------------------
    def _judge(self, ticket: Ticket | None, inst: Instance, outcome: Outcome, now: float) -> None:
        """The gateway's outlier detection for one finished attempt on ``inst``."""
        if outcome.failure in (Failure.CONNECT, Failure.COUNTED):
            self._blame(inst, now, connect=outcome.failure is Failure.CONNECT)
        elif outcome.failure is Failure.DEFERRED:
            if ticket is None:
                self._blame(inst, now, connect=False)  # no request to judge it by
            elif ticket.failed:  # a second instance failed it too: the request's fault, nobody's
                names = ", ".join(i.id for i in [*ticket.failed, inst])
                log.warning("request failed on instances %s: the request's fault, nobody blamed", names)
                ticket.failed.clear()
            else:
                ticket.failed.append(inst)
                ticket.failed_at = now
        else:  # an answer: the failures before it were their instances'
            if outcome.status < 400:
                record_success(inst)
            if ticket is not None:
                for other in ticket.failed:
                    self._blame(other, now, connect=False)
                ticket.failed.clear()

    def _blame(self, inst: Instance, now: float, connect: bool) -> None:
        pool = [i for i in self.instances.values() if i.spec.pool == inst.spec.pool and i.spec.ready]
        done = record_failure(
            inst, pool, now, connect, self.eject_after_failures, self.eject_cooldown_s, self.max_ejection_percent
        )
        if done is Ejection.EJECTED:
            log.warning("instance %s ejected for %.1f s", inst.id, self.eject_cooldown_s)
        elif done is Ejection.CAPPED:
            log.warning(
                "instance %s not ejected: %g%% of its pool is ejected already (max_ejection_percent)",
                inst.id,
                self.max_ejection_percent,
            )

    def _open(self, model: str, messages: Sequence[Any], kwargs: Mapping[str, Any], now: float) -> tuple[str, Ticket]:
        body: dict[str, Any] = {k: kwargs[k] for k in _BODY_KEYS if k in kwargs}
        body["model"], body["messages"] = model, messages
        pred = self._predict(body)
        max_tokens = requested_max_tokens(body)
        work = pred.input_tokens + expected_output_tokens(pred, self.edges, max_tokens)
        n = next(self._count)
        if n % _SWEEP_EVERY == 0:
            self.sweep(now)
        token = f"{self._prefix}{n:x}"
        ticket = self.tickets[token] = Ticket(pred, request_type(pred, self.edges), work, max_tokens, model, now)
        return token, ticket

    def _predict(self, body: dict[str, Any]) -> Prediction:
        try:
            return self.predictor.predict(body, "chat")
        except Exception:  # a broken model must not fail requests: fall back, and say so
            log.exception("predictor failed; using the max_tokens fallback")
        try:
            return _FALLBACK.predict(body, "chat")
        except (TypeError, ValueError, AttributeError):  # odd content shapes the backend will judge
            return Prediction(input_tokens=1, output_probs=(1 / 3, 1 / 3, 1 / 3), method="unknown")

    def _instance_of(self, deployment: Mapping[str, Any]) -> Instance | None:
        key = deployment_id(deployment)
        if key and key in self._by_deployment:
            return self._by_deployment[key]
        hint = (deployment.get("model_info") or {}).get(INSTANCE_HINT)
        if hint:
            inst = self.instances.get(str(hint))
        else:
            api_base = (deployment.get("litellm_params") or {}).get("api_base")
            inst = self._by_url.get(base_url(api_base)) if isinstance(api_base, str) else None
        if key:
            self._by_deployment[key] = inst
        return inst

    @staticmethod
    def _release(ticket: Ticket) -> None:
        inst = ticket.instance
        if inst is not None:
            inst.in_flight -= 1
            inst.outstanding_tokens -= ticket.work_tokens
            ticket.instance = None

    def sweep(self, now: float) -> None:
        """Forget tickets older than ``ticket_ttl_s``: failed requests not retried, or callbacks that never came."""
        old = [t for t, tk in self.tickets.items() if now - tk.opened_at > self.ticket_ttl_s]
        for t in old:
            self._release(self.tickets.pop(t))
            self._unjudged.pop(t, None)


def _skipped(kwargs: Mapping[str, Any]) -> frozenset[str]:
    """Deployments LiteLLM itself excludes for this attempt (weighted failover, retry skips)."""
    out: set[str] = set()
    for key in ("_excluded_deployment_ids", "_retry_skipped_deployment_ids"):
        ids = kwargs.get(key)
        if isinstance(ids, list | tuple | set | frozenset):
            out.update(str(i) for i in ids)
    return frozenset(out)


def attempt_observation(
    ticket: Ticket, outcome: Outcome, *, pool: str, instance: str, model: str, wall: float, keep_text_slots: bool
) -> Observation:
    """The gateway's observation of one finished attempt (the classifier's builder, as the gateway uses)."""
    pred = ticket.prediction
    return observation(
        pred,
        keep_text_slots=keep_text_slots,
        request_id=outcome.request_id,
        pool=pool,
        predicted_type=ticket.rtype.name,
        input_tokens=int(outcome.prompt_tokens or pred.input_tokens),
        output_tokens=int(outcome.completion_tokens or 0),
        ttft_s=outcome.ttft_s if outcome.stream else None,
        tbt_s=outcome.tbt_s,
        status=outcome.status,
        instance=instance,
        model=model,
        ts=wall,
        max_tokens=ticket.max_tokens,
    )
