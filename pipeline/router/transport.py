"""The router's faust transport: the stock aiokafka driver with its consumer on the app's own loop.

Three changes; the first two are read from the app (set by :func:`~pipeline.router.app.create_app`):

- **No consumer thread.** faust's aiokafka driver runs its Kafka consumer in a second thread with
  its own event loop and hands every fetch, commit and seek across through a method queue. For a
  router whose agent only awaits (it never blocks its loop), that thread buys nothing and costs
  every record two loop handoffs and a GIL contest with the agent's thread: profiled at 500
  requests/s, a quarter of the agent thread's samples sat in socket writes (16 % without the
  thread), and the router does 8-16 % less work per request without it (docs/architecture.md §5).
  Here the "thread" is a service on the app's loop: ``call_thread`` awaits the call in place,
  and nothing else about the driver changes (aiokafka's heartbeats were always tasks on the
  consumer's loop; now that is the app's).
- **The configured fetch wait.** faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its
  worker consumer, so the router would be the one consumer of ours that ``NPCFLOW_FETCH_MAX_WAIT_MS``
  does not reach (Kafka answers a waiting fetch as soon as a record arrives: this is about one
  setting meaning one thing, and an idle router's poll rate, not latency).
- **Durable writes.** The producer writes as every producer of ours does
  (:data:`pipeline.kafka.DURABLE_WRITES`: ``acks=all``, idempotent); faust only asks for that
  inside transactions, which the router does not use.

Faust loads transports from the ``faust.transports`` entry point by URL scheme, so the router
uses ``npcflow://host:port`` and gets this transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.futures import maybe_async

from pipeline.config import KafkaOptions
from pipeline.kafka import DURABLE_WRITES

#: The attribute of the faust app that carries the configured fetch wait to the transport.
FETCH_WAIT_ATTR = "npcflow_fetch_max_wait_ms"


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer "thread", run as a service on the app's loop (see the module docstring)."""

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._serving: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """What the thread would run, as a task here: start, then serve until stopped."""
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = running = self.parent_loop.create_future()
        self._serving = asyncio.ensure_future(self._serve())
        try:
            await asyncio.wait({running, self._serving}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():  # _serve ended before it was up: raise what it raised
                await self._serving
        finally:
            self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    async def stop(self) -> None:
        await super().stop()
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving

    async def _gather_remaining_tasks(self) -> None:
        """A real thread's loop ends with its thread, so mode cancels every task still on it.
        This loop is the app's: its tasks are not ours to cancel."""

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


class Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), **DURABLE_WRITES}


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, consumer on the app's loop, durable producer; ``npcflow://`` URLs."""

    Consumer = Consumer
    Producer = Producer
