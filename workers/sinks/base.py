"""The sink protocol: a small class that says how to write one batch of outputs (quix-streams' ``write``).

Everything else — consuming ``npc.outputs``, batching by size and time, retries with backoff,
dead letters, committing offsets only after a write succeeded — belongs to the one runner
(:mod:`workers.sinks.runner`). A sink's ``write`` must be idempotent: the runner delivers at least
once, so a batch may be written again after a crash, a rebalance or a replay. Every sink keys
what it writes by request id (rows, object keys, document ids, Redis keys).

A sink may also say how to ``encode`` one output for its store (COPY text, Redis entries): the
runner calls it as it parses each record, so that CPU runs while the previous batch waits on its
store instead of inside ``write`` (docs/architecture.md, "Sinks").
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from pipeline.lifecycle import Lifecycle
from topics.catalogue import Tier
from topics.fields import ReplyStatus
from topics.schemas import Output

#: What a sink writes for one output: the output itself unless the sink encodes it.
Item = TypeVar("Item")


def shipped(name: str) -> Path:
    """``infrastructure/<name>`` of a checkout (editable install), else the copy a wheel installs.

    pyproject's ``data-files`` put ``infrastructure/sql`` and ``infrastructure/opensearch`` under
    ``<prefix>/share/npcflow/`` for a regular install (the container image).
    """
    checkout = Path(__file__).resolve().parents[2] / "infrastructure" / name
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "npcflow" / name


class Sink(Lifecycle, Generic[Item]):
    """One store. Subclasses set ``name`` and ``transient`` and implement ``write`` and ``count``.

    ``Item`` is what ``encode`` makes of one output and ``write`` receives (``Output`` by default).
    """

    name: str = "sink"
    #: Exceptions that mean "the store is unreachable" (retried forever, never dead-lettered);
    #: :class:`~workers.sinks.exceptions.SinkUnavailable` always counts as one.
    transient: tuple[type[BaseException], ...] = ()

    async def _start(self) -> None:
        """Connect; nothing connects in a constructor."""

    async def _stop(self) -> None:
        """Close what ``_start`` opened."""

    def encode(self, output: Output) -> Item:
        """One output as ``write`` takes it; pure and deterministic (an error dead-letters the record).

        Called by the runner as each record is parsed, while the batch before is being written:
        per-output CPU done here overlaps the store's wait. The default passes the output on.
        """
        return cast(Item, output)

    async def write(self, batch: Sequence[Item]) -> None:
        """Write the whole batch (of encoded outputs) or raise; never write part and return."""
        raise NotImplementedError

    def encoded(self, batch: Sequence[Item | Output]) -> list[Item]:
        """``batch`` with plain outputs encoded: what a sink's ``write`` that encodes starts with.

        The runner hands ``write`` encoded items; callers outside it (tests, the cost report's
        fixtures, a script) may pass outputs as they are.
        """
        return [self.encode(item) if isinstance(item, Output) else item for item in batch]

    async def count(self) -> int:
        """How many items this sink holds for its namespace (rows, objects, documents, keys)."""
        raise NotImplementedError


def _itself(item: Any) -> Output:
    return cast(Output, item)


def latest_per_request(batch: Iterable[Item], output_of: Callable[[Item], Output] = _itself) -> list[Item]:
    """One item per request id, the latest reply winning (a late result after a fallback reply).

    Stores that upsert many rows in one statement need this: PostgreSQL refuses to update the
    same row twice in one ``INSERT ... ON CONFLICT``. ``output_of``: the output an encoded item
    was made from (the items are the outputs themselves by default).
    """
    latest: dict[str, tuple[int, Item]] = {}
    for item in batch:
        reply = output_of(item).reply
        seen = latest.get(reply.request_id)
        if seen is None or reply.replied_at_ms >= seen[0]:
            latest[reply.request_id] = (reply.replied_at_ms, item)
    return [item for _, item in latest.values()]


_BRONZE = Tier.BRONZE
_STORY_STATUSES = (ReplyStatus.OK, ReplyStatus.FALLBACK)


def is_story_arc(output: Output) -> bool:
    """A story request's answer with text: a story arc (S3 object, ``story_arcs`` row, story-arcs index).

    Decided by the tier the request was routed to (the first in its chain), not by the worker that
    answered: a Silver dialogue line that Bronze answered after a fallback is still dialogue, and
    both copies of a resent request (one answered by Silver, one by the fallback) land in the same
    index under the same id. An ``accepted`` notice or an error has no story yet.
    """
    reply = output.reply
    routed = reply.chain[0].tier if reply.chain else reply.tier
    # Module constants: every sink asks this of every output, and looking the members up on their
    # enums costs more than the comparisons.
    return routed == _BRONZE and bool(reply.text) and reply.status in _STORY_STATUSES


def is_searchable(output: Output) -> bool:
    """An output with words to search (a document in OpenSearch): a shed, timed-out or failed
    reply carries neither text nor an intent, so it is in Aurora and Redis but not in the index."""
    return bool(output.reply.text or output.reply.intent)
