"""The four tables' columns, and their rows computed in Python the obvious way, value by value.

:data:`COLUMNS` is the one list of each table's columns, in COPY order; the PostgreSQL sink
(:mod:`workers.sinks.postgres`) writes them too, but formats its COPY text itself, faster. This
mapping is the same data written plainly: the benchmark's bare psycopg client COPYs these rows
(``benchmarks/sinks.py``), and the integration tests check that the sink's tables hold exactly
these rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from topics.schemas import Output
from workers.sinks.base import is_story_arc


def output_values(output: Output) -> tuple[object, ...]:
    """One output's values, request then reply (the order :func:`table_rows` unpacks)."""
    request, reply = output.request, output.reply
    return (
        request.request_id,
        request.npc_id,
        request.tenant_id,
        request.prompt,
        request.max_tokens,
        request.sla.value if request.sla else None,
        request.latency_budget_ms,
        json.dumps(request.tools),
        json.dumps(request.context),
        request.reply_topic,
        request.created_at_ms,
        reply.tier.value,
        reply.served_tier.value if reply.served_tier else None,
        reply.served_by.value,
        reply.engine,
        reply.status.value,
        reply.late,
        reply.text,
        reply.intent,
        reply.error,
        reply.job_id,
        json.dumps([a.model_dump(mode="json") for a in reply.chain]),
        reply.latency.queue_ms,
        reply.latency.engine_ms,
        reply.latency.total_ms,
        reply.tokens.prompt,
        reply.tokens.completion,
        reply.cost_usd,
        reply.replied_at_ms,
        is_story_arc(output),
    )


#: Each table's columns in COPY order (the sink's COPY text and upserts, these rows).
COLUMNS = {
    "requests": "request_id, npc_id, tenant_id, prompt, max_tokens, sla, latency_budget_ms, tools, context,"
    " reply_topic, created_at",
    "replies": "request_id, npc_id, tenant_id, tier, served_tier, served_by, engine, status, late, text,"
    " intent, error, job_id, chain, queue_ms, engine_ms, total_ms, replied_at_ms, replied_at",
    "story_arcs": "request_id, npc_id, tenant_id, prompt, text, engine, replied_at_ms, replied_at",
    "costs": "request_id, tenant_id, tier, served_tier, engine, prompt_tokens, completion_tokens, cost_usd,"
    " replied_at_ms, replied_at",
}


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def table_rows(outputs: Sequence[Output]) -> dict[str, list[tuple[object, ...]]]:
    """The rows of each table (columns as in :data:`COLUMNS`) for outputs of distinct requests."""
    rows: dict[str, list[tuple[object, ...]]] = {table: [] for table in COLUMNS}
    for output in outputs:
        (request_id, npc_id, tenant_id, prompt, max_tokens, sla, budget, tools, context, reply_topic,
         created_ms, tier, served_tier, served_by, engine, status, late, text, intent, error, job_id,
         chain, queue_ms, engine_ms, total_ms, prompt_tokens, completion_tokens, cost_usd, replied_ms,
         story) = output_values(output)  # fmt: skip
        replied_at = _at(replied_ms)  # type: ignore[arg-type]
        rows["requests"].append((request_id, npc_id, tenant_id, prompt, max_tokens, sla, budget, tools,
                                 context, reply_topic, _at(created_ms)))  # type: ignore[arg-type]  # fmt: skip
        rows["replies"].append((request_id, npc_id, tenant_id, tier, served_tier, served_by, engine, status,
                                late, text, intent, error, job_id, chain, queue_ms, engine_ms, total_ms,
                                replied_ms, replied_at))  # fmt: skip
        if story:
            rows["story_arcs"].append((request_id, npc_id, tenant_id, prompt, text, engine, replied_ms,
                                       replied_at))  # fmt: skip
        rows["costs"].append((request_id, tenant_id, tier, served_tier, engine, prompt_tokens,
                              completion_tokens, cost_usd, replied_ms, replied_at))  # fmt: skip
    return rows
