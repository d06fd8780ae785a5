"""The classifier's Redis adapter (the only module of ours here importing redis): observations in, model versions out.

Publishing sets the model document, then the version counter, in one MULTI/EXEC, so a gateway
that sees a new version always finds its document. ``ClassifierWatcher.poll`` is what gateways
call every few seconds: one GET of the version, and the document only when it moved;
``follow_classifier`` is the loop around it that the gateway and the LiteLLM routing both run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis

from wattgate.classifier.api import Predictor
from wattgate.classifier.errors import ClassifierError
from wattgate.classifier.features import Sample
from wattgate.classifier.model import ClassifierModel, parse_model
from wattgate.classifier.predictor import ModelPredictor
from wattgate.planner.contract import OBSERVATIONS_MAXLEN, ContractError, Keys, Observation
from wattgate.profiles.classes import ClassEdges

log = logging.getLogger(__name__)


class StoreError(ClassifierError):
    """Redis could not be reached or answered badly."""


def _client(url: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    except ValueError as exc:
        raise StoreError(f"bad Redis URL {url!r}: {exc}") from exc


@dataclass(frozen=True)
class ReadReport:
    samples: list[Sample]
    skipped: int  # malformed observations, or ones without features (recorded by the fallback predictor)


class ClassifierStore:
    """Reads observations and publishes classifier versions."""

    def __init__(self, redis_url: str, keys: Keys | None = None) -> None:
        self.keys = keys or Keys()
        self.client = _client(redis_url)

    def close(self) -> None:
        self.client.close()

    def read_observations(self, limit: int = 100_000) -> ReadReport:
        """The most recent ``limit`` observations with a status of 200, oldest first."""
        try:
            entries = self.client.xrevrange(self.keys.observations, count=limit)
        except redis.RedisError as exc:
            raise StoreError(f"cannot read observations: {exc}") from exc
        samples, skipped = [], 0
        for _id, fields in reversed(entries or []):
            raw = (fields or {}).get(b"json")
            try:
                obs = Observation.from_json(raw if raw is not None else b"")
            except ContractError:
                skipped += 1
                continue
            if obs.status != 200 or not obs.features:
                skipped += 1
                continue
            try:
                slots = obs.slots() or None
            except ContractError:
                slots = None  # malformed slots: the features are still good
            samples.append(Sample(dict(obs.features), obs.output_tokens, obs.ts, obs.model, slots))
        return ReadReport(samples, skipped)

    def add_observations(self, observations: list[Observation]) -> None:
        """Append to the observations stream exactly as gateways do (field ``json``, capped stream)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for obs in observations:
                    pipe.xadd(
                        self.keys.observations, {"json": obs.to_json()}, maxlen=OBSERVATIONS_MAXLEN, approximate=True
                    )
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot write observations: {exc}") from exc

    def current_version(self) -> int:
        try:
            raw = self.client.get(self.keys.classifier_version)
        except redis.RedisError as exc:
            raise StoreError(f"cannot read the classifier version: {exc}") from exc
        return int(raw) if raw is not None else 0

    def current_model(self) -> ClassifierModel | None:
        try:
            raw = self.client.get(self.keys.classifier_model)
        except redis.RedisError as exc:
            raise StoreError(f"cannot read the classifier model: {exc}") from exc
        return None if raw is None else parse_model(raw, "classifier model in Redis")

    def publish(self, model: ClassifierModel) -> int:
        """Store ``model`` and move the version to its version (which must be above the current one)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(self.keys.classifier_version)  # type: ignore[no-untyped-call]
                raw = pipe.get(self.keys.classifier_version)
                current = int(raw) if raw is not None else 0
                if model.version <= current:
                    raise StoreError(f"model version {model.version} is not above the published {current}")
                pipe.multi()
                pipe.set(self.keys.classifier_model, model.to_json())
                pipe.set(self.keys.classifier_version, model.version)
                pipe.execute()
        except redis.WatchError as exc:
            raise StoreError("another retrain published at the same time; run it again") from exc
        except redis.RedisError as exc:
            raise StoreError(f"cannot publish the classifier: {exc}") from exc
        return model.version


class ClassifierWatcher:
    """Gateways call ``poll(current_version)`` periodically to pick up a newly published model."""

    def __init__(self, redis_url: str, edges: ClassEdges | None = None, keys: Keys | None = None) -> None:
        self.store = ClassifierStore(redis_url, keys)
        self.edges = edges

    def poll(self, current_version: int) -> tuple[int, ModelPredictor] | None:
        """A new ``(version, predictor)`` when Redis holds a version above ``current_version``, else None.

        Raises ``StoreError`` when Redis is unreachable and ``ModelFormatError`` when the published
        document is altered or invalid (both ``ClassifierError``): keep the current predictor then.
        """
        if self.store.current_version() <= current_version:
            return None
        model = self.store.current_model()
        if model is None or model.version <= current_version:
            return None
        log.info("classifier: picked up model v%s from Redis", model.version)
        return model.version, ModelPredictor(model, self.edges)

    def close(self) -> None:
        self.store.close()


async def follow_classifier(
    redis_url: str,
    edges: ClassEdges,
    keys: Keys,
    *,
    poll_s: float,
    current: Predictor,
    swap: Callable[[int, ModelPredictor], None],
) -> None:
    """Every ``poll_s``, look for a classifier version newer than the one in use (``current``'s, 0 for the
    max_tokens fallback) and hand it to ``swap``; Redis down or a refused document: keep the current one
    (logged). Runs until cancelled."""
    watcher = ClassifierWatcher(redis_url, edges, keys)
    version = current.model.version if isinstance(current, ModelPredictor) else 0
    try:
        while True:
            await asyncio.sleep(poll_s)
            try:
                found = await asyncio.to_thread(watcher.poll, version)
            except ClassifierError as exc:
                log.warning("classifier watcher: %s; keeping version %s", exc, version)
                continue
            if found is not None:
                version = found[0]
                swap(*found)
    finally:
        watcher.close()
