"""Sinks on ``npc.outputs``: one runner (:mod:`.runner`), one small class per store.

Each sink is imported only when named, so ``npcflow run sink --sink redis`` never loads boto3.
"""

from __future__ import annotations

import importlib

from pipeline.config import Settings
from topics.schemas import Output
from workers.sinks.base import Sink, is_searchable, is_story_arc
from workers.sinks.exceptions import SinkSetupError

#: ``--sink`` name → (module, class).
SINKS: dict[str, tuple[str, str]] = {
    "postgres": ("workers.sinks.postgres", "PostgresSink"),
    "s3": ("workers.sinks.s3", "S3Sink"),
    "opensearch": ("workers.sinks.opensearch", "OpenSearchSink"),
    "redis": ("workers.sinks.redis", "RedisSink"),
}


#: What each sink's :meth:`Sink.count` counts (the demo's summary names them so).
COUNTED = {"postgres": "rows", "s3": "objects", "opensearch": "documents", "redis": "results"}


async def counts(settings: Settings, names: tuple[str, ...] = tuple(SINKS)) -> dict[str, int]:
    """``{"postgres_rows": …, "s3_objects": …}``: what each store holds under this topic prefix / schema."""
    result = {}
    for name in names:
        async with build_sink(name, settings) as sink:
            result[f"{name}_{COUNTED[name]}"] = await sink.count()
    return result


def held_for(output: Output) -> dict[str, int]:
    """What each store holds for one served request, keyed as :func:`counts` reports it: a row and
    a cache entry per reply, a document per reply with words, an object per story arc."""
    holds = {"postgres": 1, "redis": 1, "opensearch": is_searchable(output), "s3": is_story_arc(output)}
    return {f"{name}_{COUNTED[name]}": int(n) for name, n in holds.items()}


def build_sink(name: str, settings: Settings) -> Sink:
    """The sink called ``name``, configured from ``settings`` (not started)."""
    if name not in SINKS:
        raise SinkSetupError(f"unknown sink {name!r}: choose one of {', '.join(SINKS)}")
    module, attr = SINKS[name]
    sink: Sink = getattr(importlib.import_module(module), attr).from_settings(settings)
    return sink


__all__ = ["COUNTED", "SINKS", "Sink", "SinkSetupError", "build_sink", "counts", "held_for"]
