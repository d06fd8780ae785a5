"""Plug the trained output-length classifier into the gateway and follow new versions published in Redis."""

from __future__ import annotations

import asyncio
import logging

from wattgate.classifier.api import Predictor, load_predictor
from wattgate.classifier.errors import ClassifierError
from wattgate.gateway.app import BackgroundTask
from wattgate.gateway.settings import GatewaySettings
from wattgate.gateway.state import GatewayState
from wattgate.planner.contract import Keys

log = logging.getLogger("wattgate.gateway")

SHIPPED_VERSION = 1  # the version of the model that ships in the package


def build_predictor(settings: GatewaySettings) -> Predictor:
    """The shipped model with its tokenizers loaded, or the max_tokens fallback (said once, in the log)."""
    return load_predictor(settings.classifier, settings.edges)


def classifier_watcher(settings: GatewaySettings) -> BackgroundTask:
    """A background task polling Redis for a newer classifier version and swapping it in without a restart."""

    async def watch(state: GatewayState) -> None:
        from wattgate.classifier.store import ClassifierWatcher  # noqa: PLC0415

        assert settings.redis_url is not None
        watcher = ClassifierWatcher(settings.redis_url, settings.edges, Keys(settings.redis_prefix))
        version = SHIPPED_VERSION
        try:
            while True:
                await asyncio.sleep(settings.classifier_poll_s)
                try:
                    found = await asyncio.to_thread(watcher.poll, version)
                except ClassifierError as exc:  # Redis down or a refused document: keep the current model
                    log.warning("classifier watcher: %s; keeping version %s", exc, version)
                    continue
                if found is not None:
                    version, predictor = found
                    state.predictor.swap(predictor, str(version))
        finally:
            watcher.close()

    return watch
