"""The game-state MCP server (``npcflow run mcp``): Silver's tools over the Model Context Protocol.

Built on the official ``mcp`` SDK (``MCPServer``). It follows ``game.state`` into memory
(:mod:`workers.game_state.follower`) and serves four tools:

- ``query_npc_state(npc_id)``, ``get_player_state(player_id)``, ``get_world_snapshot(world_id)``
  — together the ``game_state_query`` tool a request can list;
- ``rag_search(query, k)`` — lore and story arcs from OpenSearch (:mod:`workers.game_state.lore`).

Transports: **stdio** (a worker starts the server as its child, ``NPCFLOW_MCP_COMMAND``) and
**streamable HTTP** (one server for many workers, ``NPCFLOW_MCP_URL``), served stateless with
JSON responses: each tool call is one POST answered with one JSON body, no SSE stream and no
server-side session, so any replica can answer any call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import MCPServer

from pipeline.config import Settings
from pipeline.readiness import mark_ready
from workers.game_state.follower import GameStateFollower
from workers.game_state.lore import LoreSearch
from workers.game_state.state import GameState

log = logging.getLogger("npcflow.game_state")

Transport = Literal["stdio", "http"]
#: Where the streamable HTTP endpoint is mounted (``http://host:port/mcp``).
MCP_PATH = "/mcp"
#: How long the server waits to read ``game.state`` to its end before serving anyway.
CATCH_UP_TIMEOUT_S = 60.0


def build_server(state: GameState, lore: LoreSearch) -> MCPServer:
    """The MCP server over ``state`` and ``lore``; no I/O until a transport runs it."""
    # WARNING: INFO would log every call (and uvicorn's access log every POST) on the hot path.
    server = MCPServer(
        "npcflow-game-state",
        instructions="Live game state (NPCs, players, world) and lore search for NPC dialogue.",
        log_level="WARNING",
    )

    @server.tool()
    def query_npc_state(npc_id: str) -> dict[str, Any]:
        """The latest state of one NPC (position, mood, inventory … as the game server published it)."""
        return state.entity(npc_id, "npc")

    @server.tool()
    def get_player_state(player_id: str) -> dict[str, Any]:
        """The latest state of one player."""
        return state.entity(player_id, "player")

    @server.tool()
    def get_world_snapshot(world_id: str | None = None) -> dict[str, Any]:
        """A world's summary: entities per kind, its regions and quests (at most 20 of each)."""
        return state.world(world_id)

    @server.tool()
    async def rag_search(query: str, k: int = 3) -> dict[str, Any]:
        """Lore and story arcs matching ``query`` (full text); no index yet means no hits."""
        return await lore.search(query, k)

    return server


async def serve_mcp(
    settings: Settings, transport: Transport, host: str | None = None, port: int | None = None
) -> None:
    """Follow ``game.state``, then serve the tools on ``transport`` until stopped (Ctrl-C / SIGTERM)."""
    follower = GameStateFollower(settings)
    # The sinks write <prefix>npcflow-story-arcs: a sandbox's server reads its own sandbox's indices.
    indices = [settings.topic_prefix + name for name in settings.mcp_server.lore_indices]
    lore = LoreSearch(settings.opensearch_url, indices, max_hits=settings.mcp_server.rag_max_hits)
    async with follower, lore:
        if not await follower.wait_caught_up(CATCH_UP_TIMEOUT_S):
            log.warning("game.state not read to its end in %.0f s; serving what is read", CATCH_UP_TIMEOUT_S)
        server = build_server(follower.state, lore)
        if transport == "stdio":
            mark_ready(settings.process.ready_file, f"mcp stdio, {len(follower.state)} entities")
            await server.run_stdio_async()
            return
        await _serve_http(
            server,
            settings,
            host or settings.mcp_server.host,
            settings.mcp_server.port if port is None else port,
            len(follower.state),
        )


async def _serve_http(server: MCPServer, settings: Settings, host: str, port: int, entities: int) -> None:
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, json_response=True, stateless_http=True, host=host
    )
    http = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    serving = asyncio.create_task(http.serve())
    while not http.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no "bound" event
        await asyncio.sleep(0.02)
    if http.started:
        bound = http.servers[0].sockets[0].getsockname()[1] if http.servers else port
        url = f"http://{host}:{bound}{MCP_PATH}"
        log.info("game-state MCP server at %s (%d entities)", url, entities)
        mark_ready(settings.process.ready_file, f"mcp {url}")
    try:
        await serving
    finally:
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
