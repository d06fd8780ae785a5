"""Start-up checks of ``wattgate gateway``, before it serves: Redis answers, and some backend does.

Each failure is one line and a non-zero exit within seconds (bounded by ``redis_timeout_s`` and
``health_timeout_s``), rather than a gateway that starts and answers every request with an error.
Static backends are checked only without Redis: with Redis, agents' instances may serve.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from wattgate.gateway.errors import StartupError
from wattgate.gateway.settings import BackendSpec, GatewaySettings
from wattgate.settings.common import redact_url


async def backend_problem(client: httpx.AsyncClient, b: BackendSpec, timeout_s: float) -> str | None:
    """None when the backend answers its health path with any HTTP status, else why not."""
    try:
        await client.get(b.url + b.health_path, timeout=timeout_s)
    except httpx.TimeoutException:
        return f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    """The innermost OS error's words (``connection refused``) where httpx's own message is vaguer."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return (str(exc) or type(exc).__name__).splitlines()[0]


async def check(settings: GatewaySettings) -> None:
    """Raise StartupError naming what does not answer."""
    if settings.redis_url:
        from wattgate.gateway.store import unreachable  # noqa: PLC0415  (redis only when configured)

        why = await unreachable(settings.redis_url, settings.redis_timeout_s)
        if why is not None:
            raise StartupError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {why}")
        return
    async with httpx.AsyncClient(trust_env=False) as client:
        problems = await asyncio.gather(
            *(backend_problem(client, b, settings.health_timeout_s) for b in settings.backends)
        )
    if settings.backends and all(p is not None for p in problems):
        listed = "; ".join(f"{b.url} ({p})" for b, p in zip(settings.backends, problems, strict=True))
        raise StartupError(f"no backend answers: {listed}")
