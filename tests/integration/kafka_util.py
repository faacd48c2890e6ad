"""Small helpers the integration tests use to read topics from the beginning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int = 0,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout_s: float = 30.0,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the start until ``expect`` records arrived and ``until`` (if given) holds,
    or the timeout passed; then 1 s more.

    The extra second is how a duplicate would show up: tests assert the exact count afterwards.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=500
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (len(records) < expect or (until and not until(records))):
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def eventually(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return bool(predicate())
