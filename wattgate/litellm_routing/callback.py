"""The LiteLLM side: a ``CustomLogger`` that routes (``async_filter_deployments``) and records (the success and
failure callbacks), with its Redis watchers started in the running event loop on first use.

LiteLLM calls ``async_filter_deployments`` of every ``CustomLogger`` in ``litellm.callbacks`` with the
deployments of the request's model group that it finds healthy, before its own strategy picks one.
Answering with one deployment makes wattgate's pick LiteLLM's; answering with them all leaves the
pick to LiteLLM's strategy (a warning says why, once per model group and change). Only the async
paths call the filter: ``Router.acompletion`` / ``atext_completion`` and every proxy request; a
synchronous ``Router.completion`` keeps LiteLLM's strategy. Settings are the gateway's (the same
``WATTGATE_*`` variables), read at first use when none are given; litellm itself is imported by this
module only, never on the gateway's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from wattgate.classifier.api import Predictor, load_predictor
from wattgate.classifier.predictor import ModelPredictor
from wattgate.classifier.store import follow_classifier
from wattgate.classifier.tokens import count_tokens
from wattgate.gateway.metrics import GatewayMetrics
from wattgate.gateway.settings import GatewaySettings, load_settings
from wattgate.gateway.store import RedisStore
from wattgate.litellm_routing.core import TICKET_KEY, EnergyRouting, Failure, Fallback, Outcome, failure_of
from wattgate.planner.contract import InstanceRecord, Keys, Plan

log = logging.getLogger("wattgate.litellm")

_ROUTING = "routing"  # what was last said of a model group: routed by wattgate


def build_predictor(settings: GatewaySettings) -> Predictor:
    """The shipped classifier with its tokenizers loaded, or the max_tokens fallback (said once, in the log)."""
    return load_predictor(settings.classifier, settings.edges)


class WattgateRouting(CustomLogger):
    """wattgate's energy-aware routing for ``litellm.Router`` and the LiteLLM proxy.

    ``WattgateRouting(settings)``: ``settings`` defaults to the gateway's settings from the environment
    (``WATTGATE_REDIS_URL``, ``WATTGATE_REDIS_PREFIX``, ``WATTGATE_CLASSIFIER``, ``WATTGATE_EJECT_*``, ...),
    read at first use. ``await start()`` does the first-use work early (loading the classifier takes
    about a second); ``await aclose()`` flushes the records and stops the watchers.
    """

    def __init__(self, settings: GatewaySettings | None = None, predictor: Predictor | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.core: EnergyRouting | None = None
        self.store: RedisStore | None = None
        self._predictor = predictor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._stop_flusher = asyncio.Event()
        self._said: dict[str, str] = {}  # model group -> what was last logged of its routing

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> EnergyRouting:
        """Load the settings and the classifier (once), connect to Redis and start the watchers in this event
        loop (again in a new loop); wait up to ``redis_timeout_s`` for the first registry and plan."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._starting is None or self._starting.get_loop() is not loop:
                self._starting = loop.create_task(self._start(loop), name="wattgate-litellm-start")
            await asyncio.shield(self._starting)
        assert self.core is not None
        return self.core

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings = self.settings or load_settings()
        if self.core is None:
            predictor = self._predictor
            if predictor is None:
                predictor = await asyncio.to_thread(build_predictor, s)
            self.core = EnergyRouting(
                predictor,
                s.edges,
                eject_after_failures=s.eject_after_failures,
                eject_cooldown_s=s.eject_cooldown_s,
                ticket_ttl_s=s.read_timeout_s,
                max_ejection_percent=s.max_ejection_percent,
                panic_threshold_percent=s.panic_threshold_percent,
                admission_window_s=s.admission_window_s,
                spill_any=s.spill_any,
            )
        core = self.core
        self._tasks = [loop.create_task(_judge_every_second(core), name="wattgate-judge")]  # earlier loops' went
        if s.redis_url:
            store = self.store = RedisStore(
                s.redis_url, Keys(s.redis_prefix), GatewayMetrics(), s.record_buffer, s.redis_timeout_s
            )
            core.recorder = store
            seen_registry, seen_plan = asyncio.Event(), asyncio.Event()

            def on_registry(records: list[InstanceRecord]) -> None:
                core.apply_registry(records)
                seen_registry.set()

            def on_plan(plan: Plan | None) -> None:
                core.apply_plan(plan)
                seen_plan.set()

            self._stop_flusher = asyncio.Event()
            self._flusher = loop.create_task(
                store.run_flusher(s.flush_interval_s, self._stop_flusher), name="wattgate-flusher"
            )
            self._tasks += [
                loop.create_task(store.watch_instances(on_registry, s.registry_refresh_s), name="wattgate-registry"),
                loop.create_task(store.watch_plan(on_plan, s.registry_refresh_s), name="wattgate-plan"),
            ]
            if s.classifier == "model":
                self._tasks.append(loop.create_task(self._watch_classifier(s, s.redis_url), name="wattgate-clf"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(seen_registry.wait(), seen_plan.wait()), s.redis_timeout_s)
        self._loop = loop

    async def aclose(self) -> None:
        """Stop the watchers, flush what is buffered (2 s at most) and close the Redis client (same loop as
        the requests); a later request starts them again."""
        await _cancel_all(self._tasks)
        self._tasks, self._loop, self._starting = [], None, None
        store, self.store = self.store, None
        if self.core is not None:
            self.core.recorder = None
        flusher, self._flusher = self._flusher, None
        if flusher is not None:  # stopped between flushes, after a last one: a cancel mid-flush loses its batch
            self._stop_flusher.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(flusher), timeout=2.0)
            await _cancel_all([flusher])
        if store is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(store.flush(), timeout=2.0)
            await store.close()

    async def _watch_classifier(self, s: GatewaySettings, redis_url: str) -> None:
        """Poll Redis for a newer classifier version and swap it in, as the gateway does."""
        core = self.core
        assert core is not None

        def swap(version: int, predictor: ModelPredictor) -> None:
            core.predictor = predictor
            log.info("classifier predictor swapped (version %s)", version)

        await follow_classifier(
            redis_url, s.edges, Keys(s.redis_prefix), poll_s=s.classifier_poll_s, current=core.predictor, swap=swap
        )

    # -- LiteLLM's hooks -------------------------------------------------------------------------------
    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        if messages is None or request_kwargs is None or not healthy_deployments:
            return healthy_deployments  # embeddings and the like: LiteLLM's strategy
        core = self.core if self._loop is asyncio.get_running_loop() and self.core is not None else await self.start()
        if core.recorder is None:
            self._say(model, Fallback.NO_REDIS)
            return healthy_deployments
        picked = core.pick(model, healthy_deployments, messages, request_kwargs, now=time.monotonic(), wall=time.time())
        if isinstance(picked, Fallback):
            self._say(model, picked)
            return healthy_deployments
        self._say(model, _ROUTING)
        return picked

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._finish(kwargs, response_obj, None, start_time, end_time)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._finish(kwargs, None, kwargs.get("exception"), start_time, end_time)

    def _finish(self, kwargs: dict[str, Any], response: Any, exc: BaseException | None, start: Any, end: Any) -> None:
        core = self.core
        if core is None:
            return
        try:
            params = kwargs.get("litellm_params") or {}
            info = params.get("model_info") or {}
            deployment = {"model_info": info, "litellm_params": {"api_base": params.get("api_base")}} if info else None
            failure, status = failure_of(exc) if exc is not None else (Failure.NONE, 200)
            stream = kwargs.get("stream") is True
            usage = getattr(response, "usage", None)
            prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
            if exc is None and not completion:
                completion = _counted_output(response, str(kwargs.get("model") or ""))
            ttft_s, tbt_s = (
                _stream_timings(kwargs.get("completion_start_time"), start, end, completion) if stream else (None, None)
            )
            token = _ticket_of(params)
            outcome = Outcome(
                request_id=str(kwargs.get("litellm_call_id") or token or "-"),
                deployment=deployment,
                status=status,
                failure=failure,
                stream=stream,
                prompt_tokens=prompt if isinstance(prompt, int) else None,
                completion_tokens=completion if isinstance(completion, int) else None,
                ttft_s=ttft_s,
                tbt_s=tbt_s,
            )
            core.finish(token, outcome, time.monotonic(), time.time())
        except Exception:  # a bug here must never fail the request LiteLLM is serving
            log.exception("wattgate callback failed")

    def _say(self, model: str, what: str) -> None:
        if self._said.get(model) == what:
            return
        self._said[model] = what
        if what == _ROUTING:
            log.info("wattgate routes model group %s by the plan", model)
        else:
            log.warning("wattgate routing off for model group %s: %s; LiteLLM's own strategy picks", model, what)


async def _judge_every_second(core: EnergyRouting) -> None:
    while True:
        await asyncio.sleep(1.0)
        core.judge_unanswered(time.monotonic())


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again those that go on: Python 3.11's ``asyncio.wait_for``
    (inside redis-py) drops a cancellation that arrives as its inner call completes."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


def _ticket_of(params: Mapping[str, Any]) -> str | None:
    for key in ("metadata", "litellm_metadata"):
        meta = params.get(key)
        if isinstance(meta, Mapping) and isinstance(token := meta.get(TICKET_KEY), str):
            return token
    return None


def _counted_output(response: Any, model: str) -> int | None:
    """Output tokens counted from the text, when the backend sent no usage (a stream without include_usage)."""
    choices = getattr(response, "choices", None) or []
    texts = []
    for choice in choices:
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
        if isinstance(text, str):
            texts.append(text)
    return count_tokens("".join(texts), model.rsplit("/", maxsplit=1)[-1] or None) if texts else None


def _stream_timings(first: Any, start: Any, end: Any, tokens: int | None) -> tuple[float | None, float | None]:
    """TTFT and the mean time between tokens of a stream, from LiteLLM's timestamps (measured)."""
    if not (isinstance(first, dt.datetime) and isinstance(start, dt.datetime) and isinstance(end, dt.datetime)):
        return None, None
    ttft_s = max(0.0, (first - start).total_seconds())
    tbt_s = (end - first).total_seconds() / (tokens - 1) if tokens and tokens >= 2 else None
    return ttft_s, tbt_s
