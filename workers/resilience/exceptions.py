"""What can go wrong in the resilience wrappers, named for what went wrong.

Each is an :class:`~workers.engines.base.EngineError`, so serving answers it with an ``error``
reply like any engine failure, and a fallback step can tell a timeout from a refusal by type.
"""

from __future__ import annotations

from workers.engines.base import EngineError


class EngineTimeout(EngineError):
    """The engine gave no result within the time the request allowed it (deadline + grace)."""

    def __init__(self, engine: str, timeout_s: float) -> None:
        super().__init__(f"engine {engine} gave no result within {timeout_s:.1f} s")
        self.engine = engine
        self.timeout_s = timeout_s
