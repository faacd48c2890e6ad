"""Sinks on ``npc.outputs``: one runner (:mod:`.runner`), one small class per store.

Each sink is imported only when named, so ``npcflow run sink --sink redis`` never loads boto3.
"""

from __future__ import annotations

import importlib

from pipeline.config import Settings
from workers.sinks.base import Sink
from workers.sinks.exceptions import SinkSetupError

#: ``--sink`` name → (module, class).
SINKS: dict[str, tuple[str, str]] = {
    "postgres": ("workers.sinks.postgres", "PostgresSink"),
    "s3": ("workers.sinks.s3", "S3Sink"),
    "opensearch": ("workers.sinks.opensearch", "OpenSearchSink"),
    "redis": ("workers.sinks.redis", "RedisSink"),
}


def build_sink(name: str, settings: Settings) -> Sink:
    """The sink called ``name``, configured from ``settings`` (not started)."""
    if name not in SINKS:
        raise SinkSetupError(f"unknown sink {name!r}: choose one of {', '.join(SINKS)}")
    module, attr = SINKS[name]
    sink: Sink = getattr(importlib.import_module(module), attr).from_settings(settings)
    return sink


__all__ = ["SINKS", "Sink", "SinkSetupError", "build_sink"]
