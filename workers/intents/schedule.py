"""When each active NPC is refreshed: even spread, one in flight per NPC, oldest intent first.

The schedule only decides; it does no I/O and reads no clock (every call gets ``now``, epoch ms),
so its rules are unit-tested with a fake clock (docs/architecture.md, "Keeping the active set
fresh"):

- **Spread.** Each NPC refreshes on its own grid, ``phase + k · period``, its phase a hash of its
  npc_id. 200 NPCs at 2 Hz make 400 refreshes a second spread over the second, not 200 at once
  every 500 ms; the grid is absolute, so it survives a rebalance to another worker.
- **New NPCs.** One announced live (a watch, a first Gold request) is refreshed at once: it has no
  model intent yet. One read while rebuilding a partition after a rebalance waits for its grid
  point instead: its intent is probably fresh, and a whole partition due at once is a burst.
- **Coalescing.** At most one refresh in flight per NPC; the next is planned only when it ends
  (from its start, so a 5 ms engine keeps the grid), and an NPC removed and re-added meanwhile
  waits for it too.
- **Capacity.** :meth:`take` launches at most the free engine slots. NPCs that are due and wait
  for a slot are served oldest intent first (least recently refreshed), which lowers every NPC's
  rate evenly when the engine cannot keep up; the waiting is state (one entry per NPC), never a
  queue of calls, so nothing grows without bound.
- **Leases.** An NPC whose lease ended is dropped when it next comes due (within one period).
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from dataclasses import dataclass

from topics.schemas import ActiveNpc

#: Stale heap items (of removed or relaunched NPCs) tolerated before a heap is rebuilt.
COMPACT_FACTOR = 4


@dataclass
class ActiveEntry:
    """One active NPC as the schedule knows it."""

    npc_id: str
    partition: int
    tenant_id: str
    archetype: str | None
    prompt: str | None
    lease_until_ms: int
    phase_ms: float
    #: Its next grid point (or now, when it may start at once).
    due_ms: float = 0.0
    #: When its last written refresh ended (epoch ms); None: none by this worker yet.
    last_done_ms: float | None = None
    #: When its current or last refresh started.
    started_ms: float | None = None
    #: A fresh number (unique in the schedule) whenever a heap item for it is pushed: older are stale.
    version: int = 0


@dataclass
class ScheduleStats:
    #: Refreshes the rate asks for: active NPCs times Hz, integrated over time (a float).
    asked: float = 0.0
    started: int = 0
    #: Refreshes that wrote an intent.
    done: int = 0
    #: Refreshes that ended without an intent (engine error, expired, empty).
    failed: int = 0
    expired_leases: int = 0


class RefreshSchedule:
    """The active NPCs of one worker and when each is refreshed next."""

    def __init__(self, hz: float) -> None:
        if not hz > 0:
            raise ValueError("the refresh rate must be above 0 Hz")
        self.hz = hz
        self.period_ms = 1000.0 / hz
        self.stats = ScheduleStats()
        self._entries: dict[str, ActiveEntry] = {}
        #: NPCs with a refresh running; kept apart from entries so a re-added NPC waits for it.
        self._in_flight: set[str] = set()
        #: (due_ms, seq, npc_id, version): NPCs waiting for their grid point.
        self._timers: list[tuple[float, int, str, int]] = []
        #: (last_done_ms or -inf, phase_ms, seq, npc_id, version): due, waiting for a free slot.
        self._ready: list[tuple[float, float, int, str, int]] = []
        self._seq = itertools.count()
        self._asked_at: float | None = None

    # -- the set -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, npc_id: object) -> bool:
        return npc_id in self._entries

    def get(self, npc_id: str) -> ActiveEntry | None:
        return self._entries.get(npc_id)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """NPCs due now and waiting for a slot (stale items included: an upper bound)."""
        return len(self._ready)

    def phase(self, npc_id: str) -> float:
        """The NPC's offset on the period, from a hash of its id: the same on every worker."""
        return zlib.crc32(npc_id.encode()) / 2**32 * self.period_ms

    def upsert(self, active: ActiveNpc, partition: int, now: float, *, live: bool = True) -> None:
        """An ``npc.active`` record: a new NPC joins the schedule, a known one gets its new lease.

        ``live``: announced just now (refresh at once); False while rebuilding a partition from
        its start after a rebalance (wait for the grid point: see the module docstring).
        """
        entry = self._entries.get(active.npc_id)
        if entry is not None:
            entry.partition = partition
            entry.tenant_id = active.tenant_id
            entry.archetype = active.archetype
            entry.prompt = active.prompt
            entry.lease_until_ms = active.lease_until_ms
            return
        if active.lease_until_ms <= now:
            return  # an old lease read back from the compacted topic
        entry = ActiveEntry(
            npc_id=active.npc_id,
            partition=partition,
            tenant_id=active.tenant_id,
            archetype=active.archetype,
            prompt=active.prompt,
            lease_until_ms=active.lease_until_ms,
            phase_ms=self.phase(active.npc_id),
        )
        self._entries[active.npc_id] = entry
        if active.npc_id not in self._in_flight:  # else planned when that refresh ends
            self._plan(entry, now if live else self._grid_at_or_after(entry, now))

    def remove(self, npc_id: str) -> bool:
        """A tombstone (unwatched): out of the set; a refresh in flight finishes unplanned."""
        return self._entries.pop(npc_id, None) is not None

    def remove_partitions(self, partitions: set[int]) -> list[str]:
        """A revoke: every NPC of those partitions leaves (their new owner rebuilds them)."""
        gone = [npc for npc, e in self._entries.items() if e.partition in partitions]
        for npc in gone:
            del self._entries[npc]
        return gone

    # -- launching ---------------------------------------------------------------------------

    def take(self, now: float, free: int) -> list[ActiveEntry]:
        """The NPCs to refresh now, at most ``free``, oldest intent first; marked in flight."""
        self._accrue(now)
        while self._timers and self._timers[0][0] <= now:
            _, _, npc, version = heapq.heappop(self._timers)
            entry = self._live(npc, version, now)
            if entry is not None:
                entry.version = next(self._seq)
                oldest = -math.inf if entry.last_done_ms is None else entry.last_done_ms
                heapq.heappush(self._ready, (oldest, entry.phase_ms, entry.version, npc, entry.version))
        launched: list[ActiveEntry] = []
        while self._ready and len(launched) < free:
            *_, npc, version = heapq.heappop(self._ready)
            entry = self._live(npc, version, now)
            if entry is None:
                continue
            entry.version = next(self._seq)  # no heap item is live while it runs
            entry.started_ms = now
            self._in_flight.add(npc)
            self.stats.started += 1
            launched.append(entry)
        self._compact()
        return launched

    def finished(self, npc_id: str, now: float, wrote: bool) -> ActiveEntry | None:
        """A refresh ended (``wrote``: an intent went out); plans the NPC's next one if still active."""
        self._in_flight.discard(npc_id)
        if wrote:
            self.stats.done += 1
        else:
            self.stats.failed += 1
        entry = self._entries.get(npc_id)
        if entry is None:
            return None
        if wrote:
            entry.last_done_ms = now
        started = entry.started_ms if entry.started_ms is not None else now
        # The next grid point at least half a period after this start: the rate holds whatever the
        # engine's latency; a refresh that overran its grid point is due again at once.
        self._plan(entry, max(now, self._grid_at_or_after(entry, started + self.period_ms / 2)))
        return entry

    def next_due_ms(self) -> float | None:
        """When the earliest planned NPC comes due (None: nothing planned)."""
        while self._timers and self._timers[0][2] not in self._entries:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # -- internals ---------------------------------------------------------------------------

    def _grid_at_or_after(self, entry: ActiveEntry, t: float) -> float:
        k = math.ceil((t - entry.phase_ms) / self.period_ms)
        return entry.phase_ms + k * self.period_ms

    def _plan(self, entry: ActiveEntry, due_ms: float) -> None:
        entry.version = next(self._seq)
        entry.due_ms = due_ms
        heapq.heappush(self._timers, (due_ms, entry.version, entry.npc_id, entry.version))

    def _live(self, npc: str, version: int, now: float) -> ActiveEntry | None:
        """The entry a heap item stands for, if still current; an ended lease drops the NPC here."""
        entry = self._entries.get(npc)
        if entry is None or entry.version != version:
            return None
        if entry.lease_until_ms <= now:
            del self._entries[npc]
            self.stats.expired_leases += 1
            return None
        return entry

    def _accrue(self, now: float) -> None:
        """Count the refreshes the rate asked for since the last take, at the active set's size now.

        :meth:`take` runs at least once a period, so a set that changed in between is off by less
        than one period's worth of its change.
        """
        if self._asked_at is not None and now > self._asked_at:
            self.stats.asked += len(self._entries) * self.hz * (now - self._asked_at) / 1000.0
        self._asked_at = now if self._asked_at is None else max(self._asked_at, now)

    def _compact(self) -> None:
        """Drop stale heap items once they outnumber the NPCs (removals leave theirs behind)."""
        limit = COMPACT_FACTOR * max(16, len(self._entries))
        if len(self._timers) > limit:
            self._timers = [t for t in self._timers if self._is_current(t[2], t[3])]
            heapq.heapify(self._timers)
        if len(self._ready) > limit:
            self._ready = [r for r in self._ready if self._is_current(r[3], r[4])]
            heapq.heapify(self._ready)

    def _is_current(self, npc: str, version: int) -> bool:
        entry = self._entries.get(npc)
        return entry is not None and entry.version == version
