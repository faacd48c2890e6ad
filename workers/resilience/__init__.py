"""Resilience as engine wrappers: each is an :class:`~workers.engines.base.Engine` around another.

Today: :class:`Timeout`. The fallback chain, circuit breakers and load shedding join here as
further wrappers (or serving steps), composed per tier in :func:`wrap_engine`, never as
branches in the worker loop.
"""

from __future__ import annotations

from workers.engines.base import Engine
from workers.resilience.exceptions import EngineTimeout
from workers.resilience.timeout import DEFAULT_CAP_S, DEFAULT_GRACE_S, Timeout

__all__ = ["EngineTimeout", "Timeout", "wrap_engine"]


def wrap_engine(engine: Engine, *, grace_s: float = DEFAULT_GRACE_S, cap_s: float = DEFAULT_CAP_S) -> Engine:
    """The wrappers a tier worker puts around its engine, outermost last."""
    return Timeout(engine, grace_s=grace_s, cap_s=cap_s)
