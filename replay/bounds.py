"""What a replay reads: the window the analyst asked for, in epoch ms or offsets, and its errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from topics.errors import UserFacingError


class WindowError(UserFacingError, ValueError):
    """A window the user asked for cannot be read (bad time, missing topic)."""


@dataclass(frozen=True)
class Bounds:
    """What to read of one topic: records with ``from_ms <= timestamp < until_ms``.

    ``offsets`` (partition → [start, end)) replaces the time for the partitions it names; only
    those partitions are read then. ``from_ms`` None means from each partition's first record.
    """

    until_ms: int
    from_ms: int | None = None
    offsets: Mapping[int, tuple[int, int | None]] | None = None
