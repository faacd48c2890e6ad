"""The sink runner's batching, retries and dead letters, with in-memory sinks (no Kafka).

``make_output`` is the one builder of sample outputs for the sink tests.
"""

from __future__ import annotations

import time
from typing import Any

from topics.catalogue import Tier
from topics.schemas import Output, Reply, ReplyStatus, Request, ServedBy


def make_output(
    i: int,
    *,
    tier: str = "bronze",
    served_tier: str | None = None,
    status: ReplyStatus = ReplyStatus.OK,
    served_by: ServedBy = ServedBy.ENGINE,
    text: str | None = None,
    run: str = "u",
    **request_fields: Any,
) -> Output:
    """Output number ``i`` of a run: a request and its reply, ids unique per ``run``."""
    now = int(time.time() * 1000)
    request_id = f"{run}-{i:06d}"
    fields: dict[str, Any] = {
        "request_id": request_id,
        "npc_id": f"npc-{i % 17}",
        "tenant_id": "gs-sinks",
        "prompt": f"Tell the tale of the dragon number {i}.",
        "max_tokens": 64,
        "created_at_ms": now,
    } | request_fields
    request = Request(**fields)
    reply = Reply(
        request_id=request_id,
        npc_id=request.npc_id,
        tenant_id=request.tenant_id,
        tier=Tier(tier),
        served_by=served_by,
        engine="scripted",
        status=status,
        text=text if text is not None else f"Once upon a time dragon {i} slept under the mountain.",
        cost_usd=0.0001 * (i % 5),
        served_tier=Tier(served_tier or tier) if served_by == ServedBy.ENGINE else None,
        replied_at_ms=now,
    )
    return Output(request=request, reply=reply)
