"""The floor for the overhead benchmark: one bare aiokafka hop that only forwards records.

Same client settings as the pipeline (fetch wait, linger 0, acks 1, consumer group), no
parsing, no validation, no engine: whatever the pipeline costs beyond this is its overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

from pipeline import eventloop
from pipeline.config import fetch_max_wait_ms
from pipeline.readiness import mark_ready


class _Ready(ConsumerRebalanceListener):
    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set) -> None:
        if assigned:
            mark_ready(f"relay assigned {len(assigned)} partitions")


async def relay(bootstrap: str, source: str, target: str, group: str, fetch_max_wait_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=True,
        auto_commit_interval_ms=500,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1500,
    )
    consumer.subscribe([source], listener=_Ready())
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for r in records:
                    await producer.send(target, r.value, key=r.key)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=fetch_max_wait_ms())
    a = parser.parse_args()
    eventloop.install()  # the same loop as the pipeline processes, so the floor is a fair one
    asyncio.run(relay(a.bootstrap, a.source, a.target, a.group, a.fetch_max_wait_ms))


if __name__ == "__main__":
    main()
