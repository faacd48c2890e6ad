"""The sinks on ``npc.outputs`` (docs/architecture.md, "Sinks")."""

from __future__ import annotations

from pipeline.config.fields import Group, setting


class SinkSettings(Group):
    """Batching, retries and where each sink writes."""

    batch_size: int = setting(
        "NPCFLOW_SINK_BATCH_SIZE",
        500,
        "a sink writes a batch once it holds this many outputs ...",
        ge=1,
        le=100_000,
    )
    batch_ms: int = setting(
        "NPCFLOW_SINK_BATCH_MS", 200, "... or once its first output waited this long", ge=0, le=600_000
    )
    retry_max_s: float = setting(
        "NPCFLOW_SINK_RETRY_MAX_S",
        10.0,
        "a failed batch is retried after 0.1 s, doubling up to this",
        gt=0,
        le=3600,
    )
    attempts: int = setting(
        "NPCFLOW_SINK_ATTEMPTS",
        3,
        "tries of a batch failing for a reason other than an unreachable store, before its records are "
        "tried one by one and the ones that still fail go to npc.outputs.dlq",
        ge=1,
        le=100,
    )
    bucket: str = setting(
        "NPCFLOW_SINK_BUCKET",
        "npcflow-story-arcs",
        "S3 bucket of the story arcs (on NPCFLOW_S3_ENDPOINT, else AWS)",
        min_length=3,
    )
    pg_schema: str = setting(
        "NPCFLOW_SINK_PG_SCHEMA",
        "public",
        "PostgreSQL schema of the sink's tables (npcflow db migrate creates it)",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    multipart_mb: int = setting(
        "NPCFLOW_SINK_MULTIPART_MB", 8, "S3 objects from this size up are uploaded in parts", ge=5, le=5000
    )
