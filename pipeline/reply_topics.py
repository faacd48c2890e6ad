"""Which reply topics exist, learnt from cluster metadata: a worker never creates one.

Producing to a missing topic makes brokers with auto-creation on (Tansu, many Kafka defaults)
create it, so any tenant could create unlimited topics by naming them. The worker asks the
cluster which topics exist instead (a metadata request for all topics creates nothing) and
dead-letters a request whose reply topic is missing, before any engine time is spent on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: Fetches the names of every topic on the cluster.
Lookup = Callable[[], Awaitable[set[str]]]


class ReplyTopics:
    """A cache of existing topic names, refreshed on a miss at most every ``refresh_s`` seconds.

    The refresh bound keeps a flood of requests naming missing topics from turning into a flood
    of metadata requests; a topic registered a moment ago is seen within ``refresh_s``.
    """

    def __init__(self, lookup: Lookup, refresh_s: float = 1.0) -> None:
        self._lookup = lookup
        self.refresh_s = refresh_s
        self._known: set[str] = set()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.missing = 0

    async def exists(self, topic: str) -> bool:
        if topic in self._known:
            return True
        async with self._lock:
            if topic not in self._known and time.monotonic() - self._fetched_at >= self.refresh_s:
                self._known = await self._lookup()
                self._fetched_at = time.monotonic()
        if topic in self._known:
            return True
        self.missing += 1
        return False
