"""Plug the trained output-length classifier into the gateway and follow new versions published in Redis."""

from __future__ import annotations

from wattgate.classifier.api import Predictor, load_predictor
from wattgate.gateway.app import BackgroundTask
from wattgate.gateway.settings import GatewaySettings
from wattgate.gateway.state import GatewayState
from wattgate.planner.contract import Keys


def build_predictor(settings: GatewaySettings) -> Predictor:
    """The shipped model with its tokenizers loaded, or the max_tokens fallback (said once, in the log)."""
    return load_predictor(settings.classifier, settings.edges)


def classifier_watcher(settings: GatewaySettings) -> BackgroundTask:
    """A background task polling Redis for a newer classifier version and swapping it in without a restart."""

    async def watch(state: GatewayState) -> None:
        from wattgate.classifier.store import follow_classifier  # noqa: PLC0415

        assert settings.redis_url is not None
        slot = state.predictor
        await follow_classifier(
            settings.redis_url,
            settings.edges,
            Keys(settings.redis_prefix),
            poll_s=settings.classifier_poll_s,
            current=slot.current,
            swap=lambda version, predictor: slot.swap(predictor, str(version)),
        )

    return watch
