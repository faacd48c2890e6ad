"""``rag_search``: full-text search over the lore and story-arc indices in OpenSearch.

The indices (``npcflow-lore``, and ``npcflow-story-arcs`` that the OpenSearch sink fills from
Bronze's answers) may not exist yet, or may exist in some deployments only: a missing index is
no results, never an error (``ignore_unavailable``). The query is a ``simple_query_string`` over
every field, so it finds documents whatever fields the sink or a lore import gave them.

opensearch-py's synchronous client runs in a worker thread: its async client would add aiohttp
to the base install for a call the MCP server makes a few times per Silver request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from opensearchpy import NotFoundError, OpenSearch

from pipeline.lifecycle import Lifecycle

#: Characters of one hit's text returned (a hit is context for a prompt, not a document dump).
MAX_HIT_CHARS = 500
#: Fields that hold a document's text, tried in this order; otherwise the whole source as JSON.
TEXT_FIELDS = ("text", "summary", "content", "reply_text", "story", "title")


def hit_text(source: dict[str, Any]) -> str:
    for name in TEXT_FIELDS:
        value = source.get(name)
        if isinstance(value, str) and value.strip():
            return value[:MAX_HIT_CHARS]
    return json.dumps(source, default=str)[:MAX_HIT_CHARS]


class LoreSearch(Lifecycle):
    """Searches ``indices`` on the OpenSearch at ``url``; no URL configured: always no results."""

    def __init__(self, url: str | None, indices: Sequence[str], *, max_hits: int = 5, timeout_s: float = 2.0):
        self.url = url
        self.indices = tuple(indices)
        self.max_hits = max_hits
        self.timeout_s = timeout_s
        self._client: OpenSearch | None = None

    async def _start(self) -> None:
        if self.url:
            self._client = OpenSearch(self.url, timeout=self.timeout_s, max_retries=0)

    async def _stop(self) -> None:
        if self._client is not None:
            self._client.close()

    async def search(self, query: str, k: int | None = None) -> dict[str, Any]:
        """The best ``k`` hits for ``query``: ``{"query", "hits": [{"index", "id", "score", "text"}]}``.

        Raises for an unreachable OpenSearch (the tool call then fails, and Silver answers without
        lore); a missing index is simply no hits.
        """
        size = max(1, min(k or self.max_hits, self.max_hits))
        if self._client is None or not self.indices or not query.strip():
            return {"query": query, "hits": []}
        body = {"query": {"simple_query_string": {"query": query, "default_operator": "or"}}, "size": size}
        try:
            found = await asyncio.to_thread(
                self._client.search, index=",".join(self.indices), body=body, ignore_unavailable=True
            )
        except NotFoundError:
            return {"query": query, "hits": []}
        hits = [
            {
                "index": h.get("_index", ""),
                "id": h.get("_id", ""),
                "score": h.get("_score"),
                "text": hit_text(h.get("_source") or {}),
            }
            for h in found.get("hits", {}).get("hits", [])
        ]
        return {"query": query, "hits": hits}
