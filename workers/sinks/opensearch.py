"""OpenSearch sink: story arcs and dialogue, bulk-indexed with the request id as document id.

Indices ``<prefix>npcflow-story-arcs`` (Bronze story arcs) and ``<prefix>npcflow-dialogue``
(every other output with text); their mappings are the index templates in
``infrastructure/opensearch/`` (with ``npcflow-lore``, which Silver's ``rag_search`` reads),
installed by :func:`install_templates` when the sink starts and by ``npcflow search
--install-templates``. Indexing a document again under its id replaces it: idempotent.
opensearch-py's synchronous client runs in a thread (its async client needs aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import TransportError

from pipeline.config import Settings
from topics.schemas import Output
from workers.sinks.base import Sink, is_searchable, is_story_arc, latest_per_request, shipped
from workers.sinks.exceptions import SinkSetupError, SinkUnavailable

#: opensearch-py logs every request at INFO and every failed one with a traceback at WARNING: the
#: runner logs failures itself, once per retry, in one line.
logging.getLogger("opensearch").setLevel(logging.ERROR)
log = logging.getLogger("npcflow.sinks")

TEMPLATES_DIR = shipped("opensearch")
STORY_ARCS = "npcflow-story-arcs"
DIALOGUE = "npcflow-dialogue"
LORE = "npcflow-lore"


def client(url: str, timeout_s: float = 30.0) -> OpenSearch:
    return OpenSearch(url, timeout=timeout_s, max_retries=0)


def install_templates(os_client: OpenSearch, directory: Path = TEMPLATES_DIR) -> list[str]:
    """PUT every ``<name>.json`` as index template ``<name>`` (safe to repeat); returns the names.

    Keys starting with ``_`` (comments) are dropped: OpenSearch refuses unknown template keys.
    """
    names = []
    if not any(directory.glob("*.json")):
        raise SinkSetupError(f"no index templates in {directory}: is npcflow installed from its repository?")
    for path in sorted(directory.glob("*.json")):
        body = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        os_client.indices.put_index_template(name=path.stem, body=body)
        names.append(path.stem)
    return names


def document(output: Output) -> dict[str, Any]:
    """What analysts and ``rag_search`` search: who said what, to what, on which tier, for how much."""
    request, reply = output.request, output.reply
    doc: dict[str, Any] = {
        "request_id": reply.request_id,
        "npc_id": reply.npc_id,
        "tenant_id": reply.tenant_id,
        "tier": reply.tier.value,
        "served_tier": reply.served_tier.value if reply.served_tier else None,
        "engine": reply.engine,
        "status": reply.status.value,
        "prompt": request.prompt,
        "text": reply.text,
        "cost_usd": reply.cost_usd,
        "completion_tokens": reply.tokens.completion,
        "replied_at": reply.replied_at_ms,
    }
    if reply.intent:
        doc["intent"] = reply.intent
    return doc


class BulkRejected(RuntimeError):
    """OpenSearch refused some documents of a bulk request (mapping conflicts, too large, …)."""


class OpenSearchSink(Sink):
    name = "opensearch"
    transient = (OpenSearchConnectionError,)

    def __init__(self, url: str, *, prefix: str = "") -> None:
        self.url = url
        self.prefix = prefix
        self.story_arcs = f"{prefix}{STORY_ARCS}"
        self.dialogue = f"{prefix}{DIALOGUE}"
        self._client: OpenSearch | None = None
        self._templates_installed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenSearchSink:
        if not settings.opensearch_url:
            raise SinkSetupError("the opensearch sink needs NPCFLOW_OPENSEARCH_URL (http://…)")
        return cls(settings.opensearch_url, prefix=settings.topic_prefix)

    async def _start(self) -> None:
        self._client = client(self.url)
        try:
            await self.ensure_templates()
        except OpenSearchConnectionError as exc:  # down now: the first write installs them
            log.warning("opensearch sink starting without OpenSearch (writes will retry): %s", exc)

    async def ensure_templates(self) -> None:
        """Before the first document, so the indices are created with the templates' mappings."""
        if not self._templates_installed:
            assert self._client is not None, "start() first"
            await asyncio.to_thread(install_templates, self._client)
            self._templates_installed = True

    async def _stop(self) -> None:
        if self._client is not None:
            self._client.close()

    def index_for(self, output: Output) -> str | None:
        """The index an output goes to; None for an output without text (nothing to search)."""
        if is_story_arc(output):
            return self.story_arcs
        return self.dialogue if is_searchable(output) else None

    def bulk_body(self, batch: Sequence[Output]) -> str:
        lines = []
        for output in latest_per_request(batch):
            index = self.index_for(output)
            if index is None:
                continue
            lines.append(json.dumps({"index": {"_index": index, "_id": output.reply.request_id}}))
            lines.append(json.dumps(document(output)))
        return "\n".join(lines) + "\n" if lines else ""

    async def write(self, batch: Sequence[Output]) -> None:
        assert self._client is not None, "start() first"
        body = self.bulk_body(batch)
        if not body:
            return
        await self.ensure_templates()
        try:
            result = await asyncio.to_thread(self._client.bulk, body=body)
        except TransportError as exc:
            if exc.status_code == 429 or (isinstance(exc.status_code, int) and exc.status_code >= 500):
                raise SinkUnavailable(f"OpenSearch {exc.status_code}: {exc}") from exc
            raise
        if result.get("errors"):
            failed = [
                item for entry in result.get("items", []) for item in entry.values() if item.get("error")
            ]
            if any(item.get("status") in (429, 503) for item in failed):
                raise SinkUnavailable(f"OpenSearch busy: {len(failed)} documents rejected")
            first = failed[0] if failed else {}
            detail = f"first {first.get('_id')}: {first.get('error')}"
            raise BulkRejected(f"{len(failed)} documents refused, {detail}")

    async def count(self) -> int:
        """Documents in both indices."""
        assert self._client is not None, "start() first"
        total = 0
        for index in (self.story_arcs, self.dialogue):
            found = await asyncio.to_thread(self._client.count, index=index, ignore_unavailable=True)
            total += int(found.get("count", 0))
        return total

    async def search(self, text: str, size: int = 10) -> list[dict[str, Any]]:
        """Hits for ``text`` over prompts, replies and intents of both indices (``npcflow search``)."""
        assert self._client is not None, "start() first"
        body = {
            "query": {"multi_match": {"query": text, "fields": ["text", "prompt", "intent"]}},
            "size": size,
        }
        indices = f"{self.story_arcs},{self.dialogue}"
        found = await asyncio.to_thread(
            self._client.search, index=indices, body=body, ignore_unavailable=True
        )
        return [
            {"index": h["_index"], "id": h["_id"], "score": h.get("_score")} | (h.get("_source") or {})
            for h in found.get("hits", {}).get("hits", [])
        ]
