"""What can go wrong in the resilience wrappers, named for what went wrong.

Each is an :class:`~workers.engines.base.EngineError`, so serving answers it with an ``error``
reply like any engine failure, and a fallback step can tell a timeout from a refusal by type.
"""

from __future__ import annotations

import asyncio

from workers.engines.base import EngineError, EngineResult, EngineUnavailable


class EngineTimeout(EngineError):
    """The engine gave no result within the time the request allowed it (deadline + grace)."""

    def __init__(self, engine: str, timeout_s: float) -> None:
        super().__init__(f"engine {engine} gave no result within {timeout_s:.1f} s")
        self.engine = engine
        self.timeout_s = timeout_s


class BreakerOpen(EngineError):
    """A circuit breaker refused the call before the engine saw it."""

    def __init__(self, breaker: str, why: str = "", *, tier: str = "") -> None:
        super().__init__(f"breaker {breaker} is open" + (f" ({why})" if why else ""))
        self.breaker = breaker
        self.tier = tier


class DeadlineReached(EngineError):
    """No result by the request's deadline; the call goes on in ``late`` (a later tier answers now)."""

    def __init__(self, engine: str, late: asyncio.Future[EngineResult] | None = None) -> None:
        super().__init__(f"engine {engine} gave no result by the deadline (stalled or slow)")
        self.engine = engine
        self.late = late


def reason_kind(exc: BaseException) -> str:
    """A short, bounded label for why a tier could not answer (metrics and fallback headers)."""
    if isinstance(exc, BreakerOpen):
        return "breaker_open"
    if isinstance(exc, DeadlineReached):
        return "deadline"
    if isinstance(exc, EngineTimeout):
        return "timeout"
    if isinstance(exc, EngineUnavailable):
        return "unavailable"
    return "error"
