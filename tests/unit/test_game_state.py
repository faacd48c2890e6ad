"""The game state the MCP server holds, and its tools called through the MCP SDK (in process)."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client

from topics.schemas import GameStateUpdate
from workers.game_state.follower import GameStateFollower
from workers.game_state.lore import LoreSearch, hit_text
from workers.game_state.server import build_server
from workers.game_state.state import SNAPSHOT_LIMIT, GameState


def update(
    entity_id: str, kind: str = "npc", version: int = 1, world: str = "w1", **state: Any
) -> GameStateUpdate:
    return GameStateUpdate(
        entity_id=entity_id,
        world_id=world,
        kind=kind,  # type: ignore[arg-type]
        state=state,
        version=version,
        updated_at_ms=1_790_000_000_000,
    )


def test_the_newest_version_wins_and_an_older_one_is_ignored() -> None:
    state = GameState()
    assert state.apply(update("npc-1", version=2, mood="calm")) == "applied"
    assert state.apply(update("npc-1", version=1, mood="angry")) == "stale"
    assert state.entity("npc-1")["state"] == {"mood": "calm"}
    assert state.apply(update("npc-1", version=2, mood="sad")) == "applied"  # a resend replaces
    assert state.entity("npc-1", "npc")["state"] == {"mood": "sad"}
    assert state.entity("npc-1", "player") == {"entity_id": "npc-1", "found": False}
    assert state.delete("npc-1") == "deleted" and state.entity("npc-1")["found"] is False


def test_world_snapshot_counts_kinds_and_lists_regions_and_quests_bounded() -> None:
    state = GameState()
    state.apply(update("npc-1"))
    state.apply(update("p-1", kind="player"))
    for i in range(SNAPSHOT_LIMIT + 5):
        state.apply(update(f"r-{i:02d}", kind="region", weather="rain"))
    state.apply(update("q-1", kind="quest", stage=2))
    snap = state.world("w1")
    assert snap["entities"] == {"npc": 1, "player": 1, "region": SNAPSHOT_LIMIT + 5, "quest": 1}
    assert len(snap["regions"]) == SNAPSHOT_LIMIT and snap["quests"] == [{"entity_id": "q-1", "stage": 2}]
    assert state.world(None)["world_id"] == "w1"  # the only world
    state.apply(update("npc-9", world="w2"))
    assert state.world(None) == {"found": True, "worlds": ["w1", "w2"]}
    assert state.world("nowhere") == {"world_id": "nowhere", "found": False}
    state.apply(update("npc-9", world="w1", version=2))  # moved worlds
    assert state.world("w2") == {"world_id": "w2", "found": False}


class _Record:
    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self.key, self.value = key, value
        self.topic, self.partition, self.offset = "game.state", 0, 7


def test_follower_applies_updates_tombstones_and_skips_bad_records() -> None:
    from pipeline.config import Settings

    follower = GameStateFollower(Settings(kafka_bootstrap="127.0.0.1:1"))
    follower.apply(_Record(b"npc-1", update("npc-1", hp=3).to_bytes()))  # type: ignore[arg-type]
    follower.apply(_Record(b"npc-1", b'{"not": "an update"}'))  # type: ignore[arg-type]
    follower.apply(_Record(b"npc-1", b"\xff"))  # type: ignore[arg-type]
    assert follower.state.entity("npc-1")["state"] == {"hp": 3}
    follower.apply(_Record(b"npc-1", None))  # type: ignore[arg-type]
    assert follower.state.entity("npc-1")["found"] is False and follower.records == 4


def test_hit_text_prefers_text_fields_and_cuts() -> None:
    assert hit_text({"title": "T", "summary": "the arc"}) == "the arc"
    assert hit_text({"n": 1}) == '{"n": 1}'
    assert len(hit_text({"text": "x" * 2000})) == 500


async def test_the_tools_answer_over_mcp() -> None:
    state = GameState()
    state.apply(update("npc-1", mood="wary", hp=7))
    state.apply(update("p-1", kind="player", gold=12))
    lore = LoreSearch(None, ["npcflow-lore"])  # no OpenSearch configured: no hits, not an error
    async with lore, Client(build_server(state, lore), cache=None) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"query_npc_state", "get_player_state", "get_world_snapshot", "rag_search"}

        async def call(name: str, **args: Any) -> dict[str, Any]:
            result = await client.call_tool(name, args)
            assert not result.is_error, result
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

        assert (await call("query_npc_state", npc_id="npc-1"))["state"] == {"mood": "wary", "hp": 7}
        assert (await call("get_player_state", player_id="p-1"))["state"] == {"gold": 12}
        assert (await call("get_world_snapshot"))["entities"] == {"npc": 1, "player": 1}
        assert await call("rag_search", query="dragon") == {"query": "dragon", "hits": []}
        bad = await client.call_tool("query_npc_state", {})
        assert bad.is_error  # a malformed call is the caller's error, the server carries on
