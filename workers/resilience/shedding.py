"""Load shedding: degrade a request now when its queue predicts a missed deadline.

Before a request waits for an engine slot, :class:`LoadShedder` compares its deadline with
what the tier's queue predicts: the wait (requests ahead of it, fairly shared, times the
observed service time, from :class:`~workers.resilience.fair_share.FairShare`) plus one service
time. If that lands past the deadline the request is degraded at once (Silver → Bronze, a Gold
refresh skipped) instead of queueing into a miss; the decision goes on its routing record.
A free slot never sheds: the engine gets its chance, and the deadline cut and the breakers deal
with an engine that is slow for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadShedder:
    enabled: bool = True
    #: Safety margin on the prediction (1.0: shed only when the estimate alone misses).
    factor: float = 1.0

    def verdict(
        self, deadline_ms: float, now_ms: float, expected_wait_ms: float, service_ms: float | None
    ) -> str | None:
        """Why this request should be degraded now, or None to queue it."""
        if not self.enabled or service_ms is None or expected_wait_ms <= 0:
            return None
        left = deadline_ms - now_ms
        predicted = (expected_wait_ms + service_ms) * self.factor
        if predicted <= left:
            return None
        return (
            f"shed: queue predicts {predicted:.0f} ms (wait {expected_wait_ms:.0f} + service "
            f"{service_ms:.0f}) with {max(0.0, left):.0f} ms left"
        )
