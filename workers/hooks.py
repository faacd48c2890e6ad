"""The hooks every tier worker runs around serving: Prometheus metrics and cost accounting.

Each is a plain function of one outcome (:class:`~workers.serving.Replied` or
:class:`~workers.serving.DeadLettered`), so a test, a benchmark or a deployment can drop one or
add its own without touching the reply code.
"""

from __future__ import annotations

from pipeline.observability import metrics
from topics.schemas import ServedBy
from workers.serving import DeadLettered, Hooks, Replied


def record_reply_metrics(outcome: Replied) -> None:
    """Replies by tier/status/served_by, reply latency, and engine latency when an engine answered."""
    reply = outcome.reply
    tier = reply.tier.value
    metrics.REPLIES.labels(tier, reply.status.value, reply.served_by.value).inc()
    metrics.REPLY_LATENCY_MS.labels(tier).observe(reply.latency.total_ms)
    if reply.served_by is ServedBy.ENGINE:
        metrics.ENGINE_LATENCY_MS.labels(tier, reply.engine).observe(reply.latency.engine_ms)


def record_cost(outcome: Replied) -> None:
    """The reply's estimated cost (priced by the routing policy) per tier and tenant."""
    reply = outcome.reply
    metrics.COST_USD.labels(reply.tier.value, reply.tenant_id).inc(reply.cost_usd)


def record_dead_letter_metrics(outcome: DeadLettered) -> None:
    metrics.DEAD_LETTERS.labels(outcome.letter.stage).inc()


def standard_hooks() -> Hooks:
    """The hooks a worker runs unless it is given others."""
    return Hooks(on_reply=[record_reply_metrics, record_cost], on_dead_letter=[record_dead_letter_metrics])
