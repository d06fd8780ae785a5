"""wattgate's energy-aware routing inside LiteLLM (``Router`` and proxy); litellm is imported by ``callback`` only."""
