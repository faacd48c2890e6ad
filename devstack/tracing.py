"""Where did a request stop? Scan the pipeline's topics for request ids after a chaos run.

A request that got no reply was lost somewhere between intake and the client; which topics still
hold it says where: only on ``npc.requests`` (the router never routed it), on a tier topic (a
worker never answered it), with a reply on the reply topic (the client missed it), or nowhere
(the broker lost the record it had acknowledged). The chaos report carries this per lost id so a
loss is a lead, not a mystery.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from pipeline import kafka
from pipeline.config import ConfigError, Settings
from topics.catalogue import DLQ, OUTPUTS, REPLIES, REQUESTS, TIER_TOPICS, TopicSpec

#: The topics a request passes through, in order.
TRACED: tuple[TopicSpec, ...] = (REQUESTS, *TIER_TOPICS.values(), OUTPUTS, REPLIES, DLQ)


async def trace_requests(
    settings: Settings, prefix: str, request_ids: list[str], quiet_s: float = 1.0
) -> dict[str, list[str]]:
    """``{request_id: [topic names holding a record that mentions it]}`` (an empty list: nowhere).

    Reads every traced topic from its beginning; a record mentions a request when its key or value
    contains the id (replies and outputs are keyed by request id, requests by npc id).
    """
    found: dict[str, list[str]] = {rid: [] for rid in request_ids}
    if not request_ids:
        return found
    wanted = [rid.encode() for rid in request_ids]
    consumer = kafka.consumer(settings, "npcflow-trace")
    await consumer.start()
    try:
        for spec in TRACED:
            topic = spec.name(prefix)
            try:
                parts = await kafka.partitions(consumer, topic, timeout_s=5.0)
            except ConfigError:
                continue  # the run never created it
            consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
            await consumer.seek_to_beginning()
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < quiet_s:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    quiet_since = time.monotonic()
                    for record in records:
                        blob = (record.key or b"") + (record.value or b"")
                        for rid, raw in zip(request_ids, wanted, strict=True):
                            if raw in blob and topic not in found[rid]:
                                found[rid].append(topic)
                await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found
