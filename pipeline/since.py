"""The one grammar of ``--since`` and ``--until``, shared by ``cost report`` and ``replay``.

A moment is an age back from now (``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``; units may be
combined and repeated, largest first or not), an ISO-8601 time (UTC unless it names a zone), or
epoch milliseconds. Everything else is one :class:`SinceError` line that shows the forms.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from topics.errors import UserFacingError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

FORMS = "an age (90s, 15m, 1h30m, 2d), an ISO-8601 time (2025-06-01T12:00:00Z) or epoch ms"


class SinceError(UserFacingError, ValueError):
    """A time a user gave cannot be read; the message shows the forms that can."""


def parse_age_ms(text: str) -> int | None:
    """``1h30m`` → 5,400,000; None when ``text`` is not an age (it may still be a time)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        return None
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))


def parse_moment(text: str, now_ms: int | None = None, *, option: str = "--since") -> int:
    """Epoch ms of ``text``: an age before ``now_ms`` (default: now), an ISO-8601 time or epoch ms."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    value = text.strip()
    if value.isdigit() and len(value) > 6:  # epoch ms; a bare small number is a forgotten unit
        return int(value)
    age = parse_age_ms(value)
    if age is not None:
        if age <= 0:
            raise SinceError(f"{option} {text!r}: an age must be longer than 0")
        return now - age
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SinceError(f"{option} {text!r}: use {FORMS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def window_s(text: str, now_ms: int | None = None) -> float:
    """Seconds from the moment ``text`` names to now: the window ``--since`` opens (> 0)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = (now - parse_moment(text, now)) / 1000
    if seconds <= 0:
        raise SinceError(f"--since {text!r}: the moment is not in the past")
    return seconds
