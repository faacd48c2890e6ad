"""The engine-call timeout: no call outlives its request's deadline by more than a grace period.

A stalled engine (no result, no error) would otherwise hold its slot for ever. The limit is the
time left until the deadline, capped (a request cannot claim hours), plus a grace: a result a
little late is still worth replying with (``late: true``; for Gold it refreshes the intent).
"""

from __future__ import annotations

import asyncio
import time

from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, Engine, EngineResult, EngineWrapper
from workers.resilience.exceptions import EngineTimeout

DEFAULT_GRACE_S = 30.0
#: The longest any engine call may take, whatever deadline the request claims.
DEFAULT_CAP_S = 600.0


class Timeout(EngineWrapper):
    """Abandon an engine call at ``min(deadline - now, cap_s) + grace_s``; raises :class:`EngineTimeout`."""

    def __init__(
        self, inner: Engine, *, grace_s: float = DEFAULT_GRACE_S, cap_s: float = DEFAULT_CAP_S
    ) -> None:
        super().__init__(inner)
        self.grace_s = grace_s
        self.cap_s = cap_s

    def timeout_s(self, deadline_ms: int, now_ms: float | None = None) -> float:
        now = time.time() * 1000 if now_ms is None else now_ms
        remaining_s = max(0.0, min((deadline_ms - now) / 1000.0, self.cap_s))
        return remaining_s + self.grace_s

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        timeout_s = self.timeout_s(deadline_ms)
        try:
            return await asyncio.wait_for(self.inner.generate(request, deadline_ms, call), timeout_s)
        except TimeoutError:
            raise EngineTimeout(self.name, timeout_s) from None
