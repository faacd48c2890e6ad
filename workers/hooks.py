"""The hooks every tier worker runs around serving: Prometheus metrics and cost accounting.

Each is a plain function of one outcome (:class:`~workers.serving.Replied` or
:class:`~workers.serving.DeadLettered`), so a test, a benchmark or a deployment can drop one or
add its own without touching the reply code.
"""

from __future__ import annotations

import functools

from pipeline.observability import families, metrics
from pipeline.observability.cost import CACHED, Pricing
from topics.fields import ServedBy
from workers.serving import DeadLettered, Hooks, Replied


def record_reply_metrics(outcome: Replied) -> None:
    """Replies by tier/status/served_by, reply latency, and engine latency when an engine answered."""
    reply = outcome.reply
    tier = reply.tier.value
    metrics.REPLIES.labels(tier, reply.status.value, reply.served_by.value).inc()
    metrics.REPLY_LATENCY_SECONDS.labels(tier).observe(reply.latency.total_ms / 1000)
    if reply.served_by is ServedBy.ENGINE:
        metrics.ENGINE_LATENCY_SECONDS.labels(tier, reply.engine).observe(reply.latency.engine_ms / 1000)
        families.observe_hop(tier, "engine", reply.latency.engine_ms)
    if reply.late or reply.status.value == "expired":
        families.sla_miss(tier, "late" if reply.late else "expired")


def record_cost(outcome: Replied, pricing: Pricing | None = None) -> None:
    """The reply's cost (instance time, pricing.yaml) per tier and tenant; a cached answer's savings
    at ``pricing`` (the worker's ``NPCFLOW_PRICING_FILE``; the packaged prices without it)."""
    reply = outcome.reply
    metrics.COST_USD.labels(reply.tier.value, reply.tenant_id).inc(reply.cost_usd)
    if reply.served_by.value in CACHED:
        saved = (pricing or Pricing.load()).saved(reply.tier.value, reply.served_by.value)
        families.COST_SAVED_USD.labels(reply.tier.value, reply.tenant_id).inc(saved)


def record_dead_letter_metrics(outcome: DeadLettered) -> None:
    metrics.DEAD_LETTERS.labels(outcome.letter.stage).inc()


def standard_hooks(pricing: Pricing | None = None) -> Hooks:
    """The hooks a worker runs unless it is given others; ``pricing`` prices the savings."""
    return Hooks(
        on_reply=[record_reply_metrics, functools.partial(record_cost, pricing=pricing)],
        on_dead_letter=[record_dead_letter_metrics],
    )
