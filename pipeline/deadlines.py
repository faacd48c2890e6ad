"""The absolute deadline travels with a routed request as a Kafka header.

Absolute (epoch milliseconds) rather than a remaining budget, so every hop can tell how much
time is left without knowing how long the previous hops took.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

DEADLINE_HEADER = "npcflow-deadline-ms"
TIER_HEADER = "npcflow-tier"

Headers = Sequence[tuple[str, bytes]]


def now_ms() -> int:
    return int(time.time() * 1000)


def deadline_headers(deadline_ms: int, tier: str) -> list[tuple[str, bytes]]:
    return [(DEADLINE_HEADER, str(deadline_ms).encode()), (TIER_HEADER, tier.encode())]


def read_deadline(headers: Iterable[tuple[str, bytes]] | None) -> int | None:
    """The deadline from a record's headers, or ``None`` if it has none or it is unreadable."""
    for key, value in headers or ():
        if key == DEADLINE_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def remaining_ms(deadline_ms: int, at_ms: float | None = None) -> float:
    return deadline_ms - (time.time() * 1000 if at_ms is None else at_ms)
