"""What a serving outcome asks the worker to produce: one shape, so producing is one loop.

Every outcome (a reply with its output, a dead letter, a forwarded request, an intent) lists its
records as :class:`Outbound`; the worker sends them all, then waits for every acknowledgement
before the consumed offset counts as done. ``urgent`` picks the producer: a record on someone's
latency path (a reply, a request forwarded to the next tier) goes out at once (linger 0), the
rest (outputs for the sinks, routing decisions, intents, dead letters) batch with the outputs'
linger, so they share produce requests instead of costing one each.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    key: bytes
    value: bytes
    headers: Headers | None = None
    urgent: bool = False
