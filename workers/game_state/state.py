"""The game state as the MCP server holds it: the latest update per entity, read by the tools.

``game.state`` is compacted on entity id, so replaying it from the beginning rebuilds exactly
this map; the follower (:mod:`workers.game_state.follower`) does that at start and then applies
updates as they arrive. Pure data, no I/O: the tools' answers are tested without a broker.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Literal

from topics.schemas import GameStateUpdate

#: Entities of one kind a world snapshot lists at most (the rest are counted, not listed).
SNAPSHOT_LIMIT = 20
#: The kinds a world snapshot lists: the places and stories an NPC talks about, not every item.
SNAPSHOT_KINDS = ("region", "quest")

Applied = Literal["applied", "stale", "deleted"]


def _view(update: GameStateUpdate) -> dict[str, Any]:
    return {
        "entity_id": update.entity_id,
        "world_id": update.world_id,
        "kind": update.kind,
        "version": update.version,
        "updated_at_ms": update.updated_at_ms,
        "state": update.state,
    }


class GameState:
    """Latest :class:`GameStateUpdate` per entity id, indexed by world.

    An update older than the one held (lower ``version``) is ignored: a game server that resends an
    old snapshot after a newer one must not roll the NPC back. Equal versions replace (a resend).
    """

    def __init__(self) -> None:
        self._entities: dict[str, GameStateUpdate] = {}
        self._worlds: dict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._entities)

    def apply(self, update: GameStateUpdate) -> Applied:
        held = self._entities.get(update.entity_id)
        if held is not None and update.version < held.version:
            return "stale"
        if held is not None and held.world_id != update.world_id:
            self._worlds[held.world_id].discard(update.entity_id)
        self._entities[update.entity_id] = update
        self._worlds[update.world_id].add(update.entity_id)
        return "applied"

    def delete(self, entity_id: str) -> Applied:
        """A tombstone (null value) on ``game.state``: the entity is gone from the game."""
        held = self._entities.pop(entity_id, None)
        if held is not None:
            self._worlds[held.world_id].discard(entity_id)
        return "deleted"

    def entity(self, entity_id: str, kind: str | None = None) -> dict[str, Any]:
        """One entity's latest state (``found: false`` when unknown or of another kind)."""
        held = self._entities.get(entity_id)
        if held is None or (kind is not None and held.kind != kind):
            return {"entity_id": entity_id, "found": False}
        return {"found": True, **_view(held)}

    def world(self, world_id: str | None) -> dict[str, Any]:
        """A world's summary: entities per kind, and its regions and quests (at most 20 of each).

        ``world_id`` None: the only world there is, or every world's counts when there are several.
        """
        if world_id is None:
            worlds = [w for w, ids in self._worlds.items() if ids]
            if len(worlds) != 1:
                return {"found": bool(worlds), "worlds": sorted(worlds)[:SNAPSHOT_LIMIT]}
            world_id = worlds[0]
        ids = self._worlds.get(world_id) or set()
        if not ids:
            return {"world_id": world_id, "found": False}
        members = [self._entities[i] for i in sorted(ids)]
        snapshot: dict[str, Any] = {
            "world_id": world_id,
            "found": True,
            "entities": dict(Counter(m.kind for m in members)),
        }
        for kind in SNAPSHOT_KINDS:
            of_kind = [m for m in members if m.kind == kind]
            if of_kind:
                listed = of_kind[:SNAPSHOT_LIMIT]
                snapshot[f"{kind}s"] = [{"entity_id": m.entity_id, **m.state} for m in listed]
        return snapshot
