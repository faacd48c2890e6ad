"""A faust transport whose worker consumer honours the configured ``fetch_max_wait_ms``.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer, so the router
would be the one consumer of ours that ``NPCFLOW_FETCH_MAX_WAIT_MS`` does not reach (Kafka answers
a waiting fetch as soon as a record arrives, so this is about one setting meaning one thing, and
an idle router's poll rate, not latency). Faust loads transports from the ``faust.transports``
entry point by URL scheme, so the router uses ``npcflow://host:port`` and gets this transport:
the stock aiokafka driver with only the fetch wait changed, read from the app (set by
:func:`create_app` from ``Settings.kafka.fetch_max_wait_ms``).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

from pipeline.config import KafkaOptions

#: The attribute of the faust app that carries the configured fetch wait to the transport.
FETCH_WAIT_ATTR = "npcflow_fetch_max_wait_ms"


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher; the consumer is not started yet.
        consumer._fetch_max_wait_ms = getattr(
            transport.app, FETCH_WAIT_ATTR, KafkaOptions().fetch_max_wait_ms
        )
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with a latency-friendly fetch wait; selected by ``npcflow://`` URLs."""

    Consumer = Consumer
