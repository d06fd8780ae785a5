"""LiteLLM stays offline in these tests (its price map is the bundled one), and its global callbacks are restored."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is first imported

_LISTS = ("callbacks", "success_callback", "failure_callback", "_async_success_callback", "_async_failure_callback")


@pytest.fixture
def litellm_callbacks() -> Iterator[list[object]]:
    """``litellm.callbacks``, with every global callback list of litellm put back as it was after the test."""
    import litellm  # noqa: PLC0415

    saved = {name: list(getattr(litellm, name)) for name in _LISTS}
    try:
        yield litellm.callbacks
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
