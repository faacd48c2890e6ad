"""Game state over MCP: ``game.state`` (compacted) → in-memory state → the game-state MCP server.

``state.py`` (the latest update per entity), ``follower.py`` (the topic into it), ``lore.py``
(``rag_search`` over OpenSearch), ``server.py`` (the MCP tools and transports; ``npcflow run mcp``).
Silver's side, the MCP client, is :mod:`workers.tools`.
"""
