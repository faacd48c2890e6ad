"""What a replay reads: the window the analyst asked for, in epoch ms or offsets, and its errors."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from topics.errors import UserFacingError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class WindowError(UserFacingError, ValueError):
    """A window the user asked for cannot be read (bad time, missing topic)."""


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch ms from ``1717000000000``, an ISO-8601 time (UTC unless it names a zone) or ``2h`` (ago)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    value = text.strip()
    if value.isdigit():
        return int(value)
    if match := _RELATIVE.match(value):
        return now - int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(
            f"cannot read time {text!r}: use epoch ms, ISO-8601 (2025-06-01T12:00:00Z) "
            "or an age (15m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Bounds:
    """What to read of one topic: records with ``from_ms <= timestamp < until_ms``.

    ``offsets`` (partition → [start, end)) replaces the time for the partitions it names; only
    those partitions are read then. ``from_ms`` None means from each partition's first record.
    """

    until_ms: int
    from_ms: int | None = None
    offsets: Mapping[int, tuple[int, int | None]] | None = None
