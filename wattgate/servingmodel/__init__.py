"""The serving model: an event-driven model of vLLM-style engines and of a GPU cluster (all figures modelled)."""
