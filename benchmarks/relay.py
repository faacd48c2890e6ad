"""The floor for the overhead benchmark: one bare aiokafka hop that only forwards records.

Same clients as the pipeline (built by :mod:`pipeline.kafka`: fetch wait, linger 0, acks 1,
consumer group timings), no parsing, no validation, no engine: whatever the pipeline costs beyond
this is its overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import ConsumerRebalanceListener

from pipeline import eventloop, kafka
from pipeline.config import KafkaOptions, Settings
from pipeline.readiness import mark_ready


class _Ready(ConsumerRebalanceListener):
    def __init__(self, ready_file: str | None) -> None:
        self.ready_file = ready_file

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set) -> None:
        if assigned:
            mark_ready(self.ready_file, f"relay assigned {len(assigned)} partitions")


async def relay(settings: Settings, source: str, target: str, group: str) -> None:
    producer = kafka.producer(settings, f"relay-{group}")
    # No commits at all: the floor does no bookkeeping. Auto-commit stays off as everywhere (the
    # factory's default): with it, a joining member of a group loops on IllegalGeneration on noida-db.
    consumer = kafka.consumer(settings, f"relay-{group}", group_id=group)
    consumer.subscribe([source], listener=_Ready(settings.process.ready_file))
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
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=settings.kafka.fetch_max_wait_ms)
    a = parser.parse_args()
    settings = settings.with_(
        kafka_bootstrap=a.bootstrap,
        kafka=KafkaOptions(
            fetch_max_wait_ms=a.fetch_max_wait_ms, session_timeout_s=settings.kafka.session_timeout_s
        ),
    )
    # The same loop as the pipeline processes, so the floor is a fair one.
    eventloop.install(settings.process.event_loop)
    asyncio.run(relay(settings, a.source, a.target, a.group))


if __name__ == "__main__":
    main()
