"""The serving model's one base exception."""


class ServingModelError(Exception):
    """Base exception of the serving model: bad settings, unknown architectures, requests it cannot serve."""
