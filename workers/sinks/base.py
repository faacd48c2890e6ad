"""The sink protocol: a small class that says how to write one batch of outputs (quix-streams' ``write``).

Everything else — consuming ``npc.outputs``, batching by size and time, retries with backoff,
dead letters, committing offsets only after a write succeeded — belongs to the one runner
(:mod:`workers.sinks.runner`). A sink's ``write`` must be idempotent: the runner delivers at least
once, so a batch may be written again after a crash, a rebalance or a replay. Every sink keys
what it writes by request id (rows, object keys, document ids, Redis keys).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.lifecycle import Lifecycle
from topics.catalogue import Tier
from topics.schemas import Output, ReplyStatus


def shipped(name: str) -> Path:
    """``infrastructure/<name>`` of a checkout (editable install), else the copy a wheel installs.

    pyproject's ``data-files`` put ``infrastructure/sql`` and ``infrastructure/opensearch`` under
    ``<prefix>/share/npcflow/`` for a regular install (the container image).
    """
    checkout = Path(__file__).resolve().parents[2] / "infrastructure" / name
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "npcflow" / name


class Sink(Lifecycle):
    """One store. Subclasses set ``name`` and ``transient`` and implement ``write`` and ``count``."""

    name: str = "sink"
    #: Exceptions that mean "the store is unreachable" (retried forever, never dead-lettered);
    #: :class:`~workers.sinks.exceptions.SinkUnavailable` always counts as one.
    transient: tuple[type[BaseException], ...] = ()

    async def _start(self) -> None:
        """Connect; nothing connects in a constructor."""

    async def _stop(self) -> None:
        """Close what ``_start`` opened."""

    async def write(self, batch: Sequence[Output]) -> None:
        """Write the whole batch or raise; never write part and return."""
        raise NotImplementedError

    async def count(self) -> int:
        """How many items this sink holds for its namespace (rows, objects, documents, keys)."""
        raise NotImplementedError


def latest_per_request(batch: Iterable[Output]) -> list[Output]:
    """One output per request id, the latest reply winning (a late result after a fallback reply).

    Stores that upsert many rows in one statement need this: PostgreSQL refuses to update the
    same row twice in one ``INSERT ... ON CONFLICT``.
    """
    latest: dict[str, Output] = {}
    for output in batch:
        seen = latest.get(output.reply.request_id)
        if seen is None or output.reply.replied_at_ms >= seen.reply.replied_at_ms:
            latest[output.reply.request_id] = output
    return list(latest.values())


def is_story_arc(output: Output) -> bool:
    """A Bronze output with text: a story arc (S3 object, ``story_arcs`` row, story-arcs index).

    Decided by the tier the request was routed to, so a story request served by a fallback is
    still a story; an ``accepted`` notice or an error has no story yet.
    """
    reply = output.reply
    return (
        reply.tier == Tier.BRONZE
        and bool(reply.text)
        and reply.status in (ReplyStatus.OK, ReplyStatus.FALLBACK)
    )
