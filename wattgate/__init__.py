"""wattgate: an OpenAI-compatible gateway that cuts the energy of LLM serving while keeping SLOs."""

__version__ = "0.1.0"
