"""The instance the LiteLLM proxy loads from its config: ``litellm_settings.callbacks:
["wattgate.litellm_routing.proxy.wattgate_routing"]``; its settings come from ``WATTGATE_*`` at first request."""

from __future__ import annotations

from wattgate.litellm_routing.callback import WattgateRouting

wattgate_routing = WattgateRouting()
