"""The Kafka headers a request travels with, every family in one place: the wire contract beside the body.

- **Deadline** (the router, every fallback): ``npcflow-deadline-ms``, the absolute deadline, and
  ``npcflow-tier``. Absolute (epoch milliseconds) rather than a remaining budget, so every hop can
  tell how much time is left without knowing how long the previous hops took.
- **Fallback** (a worker re-publishing to the next tier, or the router diverting around an open
  breaker); all optional, a request without them is a first attempt: ``npcflow-fallback-attempt``
  (1, 2, …), ``npcflow-fallback-from`` (the tier that gave up), ``npcflow-fallback-reason`` (why,
  short), ``npcflow-fallback-chain`` (JSON list of :class:`~topics.schemas.TierAttempt`),
  ``npcflow-original-deadline-ms``.
- **Refresh** (Gold): ``npcflow-refresh: 1`` marks a model refresh of an NPC's intent; the worker
  updates the intent and sends no reply (the router already answered).
- **Replay** (analysts' sandbox): ``npcflow-replay-of`` names the recorded request a copy replays.

Readers never fail on a malformed header: the request is still served as if it were absent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import TypeAdapter

from topics.catalogue import Tier
from topics.schemas import MAX_CHAIN, TierAttempt

log = logging.getLogger("npcflow.headers")

#: A record's headers as aiokafka takes and gives them.
Headers = list[tuple[str, bytes]]
#: Forward a record: ``(topic, key, value, headers)``; returns once the producer has it queued.
Produce = Callable[[str, bytes, bytes, Headers | None], Awaitable[None]]
#: Record an audit event (a routing decision, an output): ``(topic, key, value)``, batched off the
#: latency path.
Record = Callable[[str, bytes, bytes], Awaitable[None]]

DEADLINE_HEADER = "npcflow-deadline-ms"
TIER_HEADER = "npcflow-tier"

ATTEMPT_HEADER = "npcflow-fallback-attempt"
FROM_HEADER = "npcflow-fallback-from"
REASON_HEADER = "npcflow-fallback-reason"
CHAIN_HEADER = "npcflow-fallback-chain"
ORIGINAL_DEADLINE_HEADER = "npcflow-original-deadline-ms"
FALLBACK_HEADERS = (ATTEMPT_HEADER, FROM_HEADER, REASON_HEADER, CHAIN_HEADER, ORIGINAL_DEADLINE_HEADER)

REFRESH_HEADER = "npcflow-refresh"

REPLAY_OF_HEADER = "npcflow-replay-of"

_CHAIN = TypeAdapter(list[TierAttempt])


def now_ms() -> int:
    return int(time.time() * 1000)


def deadline_headers(deadline_ms: int, tier: str) -> Headers:
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


def attempt(tier: Tier, outcome: str, reason: str = "") -> TierAttempt:
    """One entry of the fallback chain: a tier that was tried (or skipped) and why."""
    return TierAttempt(tier=tier, outcome=outcome, reason=reason[:300])  # type: ignore[arg-type]


@dataclass(frozen=True)
class FallbackContext:
    """What the fallback headers of a consumed record say (attempt 0: not a fallback)."""

    attempt: int = 0
    from_tier: str | None = None
    reason: str = ""
    chain: tuple[TierAttempt, ...] = ()
    original_deadline_ms: int | None = None

    @classmethod
    def read(cls, headers: Iterable[tuple[str, bytes]] | None) -> FallbackContext:
        """Parse the headers; malformed ones are ignored (the request is still served)."""
        values = {k: v for k, v in headers or () if k in FALLBACK_HEADERS}
        if not values:
            return cls()
        try:
            attempt = int(values.get(ATTEMPT_HEADER, b"0"))
            chain = tuple(_CHAIN.validate_json(values.get(CHAIN_HEADER, b"[]")))[:MAX_CHAIN]
            original = values.get(ORIGINAL_DEADLINE_HEADER)
            return cls(
                attempt=attempt,
                from_tier=values[FROM_HEADER].decode() if FROM_HEADER in values else None,
                reason=values.get(REASON_HEADER, b"").decode(errors="replace"),
                chain=chain,
                original_deadline_ms=int(original) if original else None,
            )
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring malformed fallback headers: %s", exc)
            return cls()


def fallback_headers(
    to_tier: Tier,
    deadline_ms: int,
    *,
    attempt: int,
    from_tier: Tier,
    reason: str,
    chain: Sequence[TierAttempt],
    original_deadline_ms: int,
) -> Headers:
    """Every header a re-published (or router-diverted) request carries."""
    hops = json.dumps([hop.model_dump(mode="json") for hop in chain[-MAX_CHAIN:]])
    return [
        *deadline_headers(deadline_ms, to_tier.value),
        (ATTEMPT_HEADER, str(attempt).encode()),
        (FROM_HEADER, from_tier.value.encode()),
        (REASON_HEADER, reason[:300].encode()),
        (CHAIN_HEADER, hops.encode()),
        (ORIGINAL_DEADLINE_HEADER, str(original_deadline_ms).encode()),
    ]


def refresh_headers(deadline_ms: int) -> Headers:
    """Headers of a refresh sent to the Gold tier topic (its own deadline: a refresh is not urgent)."""
    return [*deadline_headers(deadline_ms, "gold"), (REFRESH_HEADER, b"1")]


def is_refresh(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    return any(key == REFRESH_HEADER and value == b"1" for key, value in headers or ())


def replay_headers(original_request_id: str | None) -> Headers:
    """Headers of a replayed copy: which recorded request it replays (none for an unreadable one)."""
    return [(REPLAY_OF_HEADER, original_request_id.encode())] if original_request_id else []
