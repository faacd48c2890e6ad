"""The Python client a game server uses: submit requests, await their replies.

Replies are correlated by request id. The client reads the whole reply topic (no consumer
group: every client sees every reply and keeps the ones it is waiting for), starting at its
end when the client starts, so a fresh client never sees old traffic. A reply for a request
that already has one, or that nobody is waiting for any more (timed out), is dropped and
counted, never returned twice — at-least-once delivery upstream makes duplicates possible.

An asynchronous tier (Bronze on SageMaker Async) first sends an ``accepted`` notice carrying
the job id: the client records it (:attr:`NPCClient.jobs`) and goes on waiting for the final
reply; :meth:`NPCClient.job` looks a job up in the job store at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline import kafka
from pipeline.config import Settings
from pipeline.lifecycle import Lifecycle
from topics.catalogue import REPLIES, REQUESTS
from topics.fields import ReplyStatus, Sla
from topics.headers import now_ms
from topics.policy import RoutingPolicy, Unroutable
from topics.schemas import Reply, Request

log = logging.getLogger("npcflow.client")

#: How many recently answered request ids are remembered to recognise duplicates.
SEEN_CAPACITY = 100_000


class ReplyTimeout(TimeoutError):
    """No reply arrived in time; the request may still be answered later (then counted as late)."""


@dataclass
class ClientStats:
    """Each reply counts once, by the first copy; a later copy of the same reply (delivery is
    at-least-once upstream) is a duplicate, whichever way the first was counted."""

    sent: int = 0
    replies: int = 0
    duplicates: int = 0
    #: Replies to requests this client gave up waiting for.
    late: int = 0
    #: Replies to requests this client never waited for (``submit``, or another client's).
    unsolicited: int = 0
    undecodable: int = 0
    #: ``accepted`` notices of asynchronous jobs (each is followed by the request's final reply).
    notices: int = 0
    #: Requests sent again because their reply was overdue (see :meth:`NPCClient.request`).
    resent: int = 0


class NPCClient(Lifecycle):
    """A game server's handle on npcflow.

    ``async with NPCClient(Settings.from_env(), tenant_id="gs-eu-1") as client: await client.request(...)``

    ``kafka`` is the settings (bootstrap, fetch wait) or just a bootstrap string.
    """

    def __init__(
        self,
        kafka: Settings | str,
        tenant_id: str,
        *,
        prefix: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        self.settings = kafka if isinstance(kafka, Settings) else Settings(kafka_bootstrap=kafka)
        self.bootstrap = self.settings.require_kafka()
        prefix = self.settings.topic_prefix if prefix is None else prefix
        self.tenant_id = tenant_id
        self.intake_topic = REQUESTS.name(prefix)
        self.reply_topic = reply_topic or REPLIES.name(prefix)
        #: Only a non-default reply topic is written into the request; workers default to npc.replies.
        self._request_reply_topic = reply_topic
        self.stats = ClientStats()
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._given_up: OrderedDict[str, None] = OrderedDict()
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        #: Why the reply reader stopped, if it did; requests then fail at once.
        self.reader_error: Exception | None = None
        #: Request id → job id, from ``accepted`` notices (the latest SEEN_CAPACITY).
        self.jobs: OrderedDict[str, str] = OrderedDict()
        #: The router's policy (the same file), for the deadlines a request can get.
        self._policy = RoutingPolicy.load(self.settings.policy_file)

    async def _start(self) -> None:
        """Connect and position at the end of the reply topic (a failure closes what was opened)."""
        self._producer = kafka.producer(self.settings, f"npcflow-client-{self.tenant_id}")
        await self._producer.start()
        self._consumer = kafka.consumer(self.settings, f"npcflow-client-{self.tenant_id}")
        await self._consumer.start()
        partitions = await kafka.partitions(self._consumer, self.reply_topic)
        tps = [TopicPartition(self.reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        # Only replies produced from now on: ListOffsets(latest) skips the topic's history.
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, so no reply produced after start() is missed
            await self._consumer.position(tp)
        # The intake's leaders before the first request (a missing reply topic has failed above).
        await kafka.warm(self._producer, self.intake_topic)
        self._reader = asyncio.create_task(self._read_replies(), name="npcflow-client-replies")

    async def _stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for fut in self._pending.values():
            fut.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    def build_request(
        self,
        npc_id: str,
        prompt: str,
        *,
        max_tokens: int = 32,
        sla: Sla | str | None = None,
        latency_budget_ms: int | None = None,
        tools: list[str] | None = None,
        context: dict | None = None,
        request_id: str | None = None,
    ) -> Request:
        return Request(
            request_id=request_id or uuid.uuid4().hex,
            npc_id=npc_id,
            tenant_id=self.tenant_id,
            prompt=prompt,
            max_tokens=max_tokens,
            sla=Sla(sla) if sla is not None else None,
            latency_budget_ms=latency_budget_ms,
            tools=tools or [],
            context=context or {},
            created_at_ms=now_ms(),
            reply_topic=self._request_reply_topic,
        )

    async def submit(self, request: Request) -> str:
        """Fire and forget: produce the request and return its id once the broker has it."""
        await self._produce(request)
        self.stats.sent += 1
        return request.request_id

    async def _produce(self, request: Request) -> None:
        assert self._producer is not None, "start() first"
        ack = await self._producer.send(self.intake_topic, request.to_bytes(), key=request.npc_id.encode())
        await ack

    async def request(self, request: Request, timeout_s: float = 30.0) -> Reply:
        """Produce the request and wait for its one reply; raises :class:`ReplyTimeout`.

        A request that names a latency budget and is still unanswered ``client.resend_after_s``
        past the latest deadline its fallbacks can give it (:meth:`RoutingPolicy.latest_deadline`),
        and that no tier has taken as a job (an ``accepted`` notice), is sent again under the same
        id (at most ``client.max_resends`` times):
        workers answer every request by its deadline (a fallback or ``expired`` at worst), so such
        silence means the request or its reply was lost on the way (a request is at-least-once: a
        producer that never got its acknowledgement, a cluster that lost an unreplicated write).
        The pipeline then answers the copy (``expired`` once the deadline has passed); whichever
        reply comes first is returned, later ones are dropped as duplicates.
        """
        if self.reader_error is not None:
            raise ConnectionError(f"reply reader stopped: {self.reader_error}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[request.request_id] = fut
        give_up_at = loop.time() + timeout_s
        try:
            await self.submit(request)
            resends = 0
            while True:
                wait_s = give_up_at - loop.time()
                resend_at = self._resend_at(request, resends)
                if resend_at is not None:
                    wait_s = min(wait_s, resend_at - now_ms() / 1000)
                # asyncio.wait, not wait_for: wait_for yields while cancelling, and a reply delivered
                # in that gap would be miscounted as unsolicited instead of late.
                done, _ = await asyncio.wait({fut}, timeout=max(0.0, wait_s))
                if done:
                    return fut.result()
                if loop.time() >= give_up_at:
                    self._remember(self._given_up, request.request_id)
                    fut.cancel()
                    raise ReplyTimeout(f"no reply to {request.request_id} within {timeout_s} s")
                if resend_at is not None and now_ms() / 1000 >= resend_at:
                    resends += 1
                    await self._resend(request, resends)
        finally:
            self._pending.pop(request.request_id, None)

    def _resend_at(self, request: Request, resends: int) -> float | None:
        """When (epoch seconds) to send ``request`` again if no reply came; None: never."""
        options = self.settings.client
        if not request.latency_budget_ms or options.resend_after_s <= 0 or resends >= options.max_resends:
            return None
        if request.request_id in self.jobs:
            # Accepted as a job (its own or a fallback's): the pipeline has it, and the job
            # collector answers by the job's deadline. A copy would only run it twice.
            return None
        try:
            route = self._policy.route(request)
        except Unroutable:  # the router dead-letters it: no copy would be answered either
            return None
        # By the latest deadline a fallback can give it, not the routed tier's: in a 30 s embedded
        # demo the SDK resent 6-9 of 14 Silver requests that were falling back to Bronze, and each
        # copy ran a model again on the tier that was already short of capacity.
        deadline_s = self._policy.latest_deadline(route) / 1000
        return deadline_s + options.resend_after_s * (resends + 1)

    async def _resend(self, request: Request, attempt: int) -> None:
        overdue_s = self.settings.client.resend_after_s * attempt
        log.warning(
            "no reply to %s %.0f s past its deadline: sending it again", request.request_id, overdue_s
        )
        try:
            await self._produce(request)
            self.stats.resent += 1
        except KafkaError as exc:  # the original was accepted: keep waiting, try again later
            log.warning("resend of %s refused by the broker: %s", request.request_id, exc)

    async def job(self, job_id: str) -> dict[str, object] | None:
        """An asynchronous job's record (state pending/completed/failed, its final reply when done).

        Read from the job store (S3: ``NPCFLOW_S3_ENDPOINT``, ``NPCFLOW_JOBS_BUCKET``); None when no
        job has that id.
        """
        from dataclasses import asdict

        from pipeline.job_store import JobStore

        record = await JobStore.from_settings(self.settings).get(job_id)
        return None if record is None else asdict(record)

    @staticmethod
    def _remember(ids: OrderedDict[str, None], request_id: str) -> None:
        ids[request_id] = None
        if len(ids) > SEEN_CAPACITY:
            ids.popitem(last=False)

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._deliver(record.value or b"")
        except Exception as exc:
            # Without a reader no reply can arrive: fail every waiting request now, not at its timeout.
            log.error("reply reader for %s stopped: %s", self.reply_topic, exc)
            self.reader_error = exc
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"reply reader stopped: {exc}"))

    def _deliver(self, raw: bytes) -> None:
        try:
            reply = Reply.from_bytes(raw)
        except ValueError:
            self.stats.undecodable += 1
            return
        rid = reply.request_id
        fut = self._pending.get(rid)
        if reply.status is ReplyStatus.ACCEPTED:  # a notice: the final reply is still to come
            self.stats.notices += 1
            if fut is not None and reply.job_id is not None:
                self.jobs[rid] = reply.job_id
                if len(self.jobs) > SEEN_CAPACITY:
                    self.jobs.popitem(last=False)
            return
        if fut is not None and not fut.done():
            fut.set_result(reply)
            self.stats.replies += 1
            self._remember(self._answered, rid)
        elif rid in self._answered:
            self.stats.duplicates += 1
        elif rid in self._given_up:
            self.stats.late += 1
            self._remember(self._answered, rid)
        else:
            self.stats.unsolicited += 1
            self._remember(self._answered, rid)
