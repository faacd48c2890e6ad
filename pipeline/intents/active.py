"""The active set: which NPCs a game needs fresh intents for, announced on the compacted ``npc.active``.

A game acts on the intents of the few NPCs near its players every frame; Gold re-thinks exactly
those at 1-2 Hz (docs/architecture.md, "Keeping the active set fresh"). An NPC is active while it
holds a *lease*: a record on ``npc.active`` (key = npc_id) saying until when. Two writers:

- a game server *watches* NPCs (``IntentCache.watch``): announced at once, renewed before the lease
  ends for as long as they stay watched, a tombstone on ``unwatch``;
- the router *marks* the NPC of every Gold request: a lease for ``NPCFLOW_GOLD_ACTIVE_LEASE_MS``.

:class:`ActiveAnnouncer` is the bookkeeping both share, with no I/O: it says which record to send,
or that none is needed. A lease is announced again only once less than half of it is left, so
a router answering 1,000 requests a second for one NPC writes one record per half lease, and a
game server that dies stops its NPCs' refreshes within one lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from topics.catalogue import ACTIVE
from topics.fields import MAX_PROMPT_CHARS
from topics.headers import now_ms
from topics.schemas import ActiveNpc

#: Asked of the model when nobody said what an active NPC is facing.
GENERIC_PROMPT = "Decide what you do next, in a few words."
#: ``ActiveNpc.archetype``'s limit: a request's context value may be longer.
MAX_ARCHETYPE_CHARS = 64
#: Router leases remembered at most; beyond it the expired ones are forgotten (memory bound).
MAX_TRACKED = 100_000


@dataclass
class _Lease:
    until_ms: int
    #: Watched by this process: renewed until unwatched (a marked NPC's lease just runs out).
    watched: bool
    tenant_id: str
    archetype: str | None
    prompt: str | None


@dataclass(frozen=True)
class Announcement:
    """One record for ``npc.active``: the NPC's lease, or None (a tombstone: out of the set)."""

    npc_id: str
    record: ActiveNpc | None
    topic: str

    @property
    def key(self) -> bytes:
        return self.npc_id.encode()

    @property
    def value(self) -> bytes | None:
        return None if self.record is None else self.record.to_bytes()


@dataclass
class AnnouncerStats:
    announced: int = 0
    deduped: int = 0
    tombstones: int = 0


class ActiveAnnouncer:
    """Lease bookkeeping for one writer of ``npc.active``; the caller sends what it returns."""

    def __init__(
        self,
        *,
        prefix: str = "",
        lease_ms: int,
        tenant_id: str,
        clock: Callable[[], int] = now_ms,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.topic = ACTIVE.name(prefix)
        self.lease_ms = lease_ms
        self.tenant_id = tenant_id
        self.stats = AnnouncerStats()
        self._clock = clock
        self._max_tracked = max_tracked
        self._leases: dict[str, _Lease] = {}

    @property
    def watched(self) -> frozenset[str]:
        """The NPCs watched now; any thread may ask (a copy taken in one step under the GIL)."""
        return frozenset(npc for npc, lease in list(self._leases.items()) if lease.watched)

    def mark(
        self,
        npc_id: str,
        *,
        archetype: str | None = None,
        prompt: str | None = None,
        tenant_id: str | None = None,
    ) -> Announcement | None:
        """The NPC was used (a Gold request): its lease, or None while the announced one has > half left."""
        now = self._clock()
        lease = self._leases.get(npc_id)
        if lease is not None and lease.until_ms - now >= self.lease_ms / 2:
            self.stats.deduped += 1
            return None
        watched = lease is not None and lease.watched
        if lease is None and len(self._leases) >= self._max_tracked:
            self._forget_expired(now)
        return self._announce(npc_id, now, watched, tenant_id or self.tenant_id, archetype, prompt)

    def watch(self, npc_id: str, *, archetype: str | None = None, prompt: str | None = None) -> Announcement:
        """Keep the NPC active until :meth:`unwatch`: announced now, renewed by :meth:`renewals`."""
        return self._announce(npc_id, self._clock(), True, self.tenant_id, archetype, prompt)

    def unwatch(self, npc_id: str) -> Announcement | None:
        """Take a watched NPC out of the set (a tombstone); None if this process did not watch it."""
        lease = self._leases.get(npc_id)
        if lease is None or not lease.watched:
            return None
        del self._leases[npc_id]
        self.stats.tombstones += 1
        return Announcement(npc_id, None, self.topic)

    def forget(self, npc_id: str) -> None:
        """Drop what this writer knows of the NPC's lease (its announcement was not sent)."""
        self._leases.pop(npc_id, None)

    def renewals(self) -> list[Announcement]:
        """Watched NPCs whose lease has half or less left, announced again (call every lease/4)."""
        now = self._clock()
        due = [
            (npc, lease)
            for npc, lease in self._leases.items()
            if lease.watched and lease.until_ms - now <= self.lease_ms / 2
        ]
        return [self._announce(npc, now, True, x.tenant_id, x.archetype, x.prompt) for npc, x in due]

    def _announce(
        self, npc_id: str, now: int, watched: bool, tenant_id: str, archetype: str | None, prompt: str | None
    ) -> Announcement:
        until = now + self.lease_ms
        self._leases[npc_id] = _Lease(until, watched, tenant_id, archetype, prompt)
        self.stats.announced += 1
        record = ActiveNpc(
            npc_id=npc_id,
            tenant_id=tenant_id,
            archetype=archetype[:MAX_ARCHETYPE_CHARS] if archetype else None,
            prompt=prompt[:MAX_PROMPT_CHARS] if prompt else None,
            lease_until_ms=until,
            announced_at_ms=now,
        )
        return Announcement(npc_id, record, self.topic)

    def _forget_expired(self, now: int) -> None:
        expired = [npc for npc, lease in self._leases.items() if not lease.watched and lease.until_ms <= now]
        for npc in expired:
            del self._leases[npc]
