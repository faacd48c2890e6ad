"""What serving produces: the one reply a request gets, and the records every outcome lists.

**The reply** says who served the request, where the time went, what it cost and whether it was
late. It is built in one place for every path that answers (a worker serving a request, the job
collector publishing a SageMaker job's final reply), so a reply means the same whoever sent it.

**The records.** Every outcome (a reply with its output, a dead letter, a forwarded request, an
intent) lists what it produces as :class:`Outbound`; the worker sends them all, then waits for
every acknowledgement before the consumed offset counts as done. ``urgent`` picks the producer:
a record on someone's latency path (a reply, a request forwarded to the next tier) goes out at
once (linger 0), and so does a reply's output, which then travels in the reply's own produce
request. The rest (routing decisions, intents, dead letters, late outputs) batch with a linger,
so they share produce requests instead of costing one each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.observability.cost import Pricing
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.headers import Headers
from topics.policy import RoutingPolicy
from topics.schemas import Latency, Reply, TierAttempt, TokenUsage
from workers.engines.base import EngineResult

if TYPE_CHECKING:
    from workers.serving import Job


def build_reply(
    job: Job,
    tier: Tier,
    status: ReplyStatus,
    picked_ms: float,
    *,
    engine: str,
    policy: RoutingPolicy,
    result: EngineResult | None = None,
    error: str | None = None,
    done_ms: float | None = None,
    chain: Sequence[TierAttempt] = (),
    pricing: Pricing | None = None,
) -> Reply:
    """The one reply for ``job``: who served it, where the time went, what it cost, whether late."""
    request = job.request
    done_ms = time.time() * 1000 if done_ms is None else done_ms
    served_by = ServedBy.ENGINE if result is not None else ServedBy.NONE
    served_by = ServedBy.RESULT_CACHE if result is not None and result.cached else served_by
    served_tier = next((a.tier for a in chain if a.outcome == "served"), tier if result else None)
    tokens = TokenUsage(
        prompt=result.prompt_tokens if result else 0, completion=result.completion_tokens if result else 0
    )
    return Reply(
        request_id=request.request_id,
        npc_id=request.npc_id,
        tenant_id=request.tenant_id,
        tier=tier,
        served_by=served_by,
        engine=engine if served_by is ServedBy.ENGINE else "",
        status=status,
        late=status in (ReplyStatus.OK, ReplyStatus.FALLBACK) and done_ms > job.deadline_ms,
        text=result.text if result else "",
        tokens=tokens,
        latency=Latency(
            queue_ms=max(0.0, picked_ms - request.created_at_ms),
            engine_ms=max(0.0, done_ms - picked_ms) if result else 0.0,
            total_ms=max(0.0, done_ms - request.created_at_ms),
        ),
        cost_usd=(pricing or Pricing.load()).reply_cost(
            (served_tier or tier).value, served_by.value, max(0.0, done_ms - picked_ms) if result else 0.0
        ),
        error=error[:2000] if error else error,
        served_tier=served_tier,
        chain=list(chain),
        replied_at_ms=int(done_ms),
        tools=list(result.tool_calls) if result is not None and result.tool_calls else None,
    )


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    key: bytes
    value: bytes
    headers: Headers | None = None
    urgent: bool = False
