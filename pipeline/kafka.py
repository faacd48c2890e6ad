"""One factory for every Kafka client the product builds.

Producers, consumers and admin clients all take their options from :class:`~pipeline.config.Settings`
here, so the latency-path choices (``linger_ms`` 0, ``acks=all``, the fetch wait, a short session
timeout; docs/architecture.md, "The broker") are made once, and so is the TLS/SASL
security (:mod:`pipeline.config.kafka`): no client of ours can connect in the clear to a cluster
that asks for SASL_SSL. faust's own clients get the same security as ``broker_credentials``
(:func:`pipeline.router.app.create_app`) and their fetch wait from :mod:`pipeline.router.app`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from pipeline.config import ConfigError, Settings

log = logging.getLogger("npcflow.kafka")

#: Kafka's CreateTopics error code for a topic that exists already.
TOPIC_ALREADY_EXISTS = 36


#: How every producer of ours writes, faust's included (:mod:`pipeline.router.app`): a record is
#: acknowledged once every in-sync replica has it, so with ``min.insync.replicas=2`` a broker may
#: die without losing an acknowledged record (``acks=1`` lost one routed request in a broker-kill
#: test: the leader acknowledged it, died before its followers fetched it, and the router had
#: committed the intake past it); idempotence makes a retry after a lost acknowledgement write once.
DURABLE_WRITES: Mapping[str, Any] = MappingProxyType({"acks": "all", "enable_idempotence": True})


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic for a reason other than "it exists"."""


def producer(settings: Settings, client_id: str, *, linger_ms: int = 0, **overrides: Any) -> AIOKafkaProducer:
    """A producer; ``linger_ms`` 0 on latency paths, a few tens of ms for batched side records.

    Writes are :data:`DURABLE_WRITES` (``acks=all`` with idempotence).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.require_kafka(),
        "client_id": client_id,
        "linger_ms": linger_ms,
        **DURABLE_WRITES,
        **settings.kafka.security.aiokafka_options(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(
    settings: Settings,
    client_id: str,
    *topics: str,
    group_id: str | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer with the project's fetch wait and group timings; offsets are committed by hand.

    Auto-commit stays off everywhere: we commit only finished work (at-least-once).
    """
    session_ms = int(settings.kafka.session_timeout_s * 1000)
    options: dict[str, Any] = {
        "bootstrap_servers": settings.require_kafka(),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms,
        **settings.kafka.security.aiokafka_options(),
    }
    if group_id is not None:
        options.update(
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(300, session_ms // 4),
        )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """The partitions of ``topic``, refreshing the consumer's metadata until the broker knows it.

    A topic created a moment ago may not be in a broker's metadata yet, and a consumer only asks
    for the topics it follows: without the refresh, a process started right after
    ``npcflow topics create`` would take the topic for missing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        if loop.time() > deadline:
            raise ConfigError(f"topic {topic!r} does not exist: run `npcflow topics create` first")
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        await asyncio.sleep(0.1)


async def warm(producer: AIOKafkaProducer, *topics: str, timeout_s: float = 5.0) -> bool:
    """Have ``producer`` know ``topics``' leaders and hold a connection to each before its first send.

    Otherwise the first record to each topic waits for a metadata round trip and a new connection,
    and so does whatever the process does next (measured: a new game client's first Gold request
    5-10 ms slower; a router's first reply, dead letter or output likewise, and the request behind
    it waited too): a Gold request's whole budget on a busy host. Best effort, at most
    ``timeout_s``: what cannot be reached now is connected by the first send, as before.
    """
    client = producer.client

    async def connect() -> None:
        for topic in topics:
            partitions = await producer.partitions_for(topic)
            leaders = {client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions}
            for node in leaders - {None, -1}:
                await client.ready(node)

    try:
        await asyncio.wait_for(connect(), timeout_s)
    except Exception as exc:
        log.warning("could not warm a producer for %s (%s); the first sends connect", ", ".join(topics), exc)
        return False
    return True


async def probe(settings: Settings, timeout_s: float = 10.0) -> None:
    """Ask the brokers for metadata once; :class:`KafkaConnectionError` if none answers in time.

    A long-running process calls this before it starts, so a broker that is down is one line at
    start (pipeline/failures.py names the setting), not a faust traceback or a silent retry loop.
    """
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=settings.require_kafka(),
        client_id="npcflow-probe",
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka.security.aiokafka_options(),
    )
    # aiokafka logs every refused connection at ERROR: the error we raise says it once.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    except TimeoutError:
        raise KafkaConnectionError(f"no broker answered within {timeout_s:g} s") from None
    finally:
        quiet.setLevel(level)
        await client.close()


def admin(settings: Settings, client_id: str = "npcflow-admin", **overrides: Any) -> AIOKafkaAdminClient:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.require_kafka(),
        "client_id": client_id,
        **settings.kafka.security.aiokafka_options(),
    }
    options.update(overrides)
    return AIOKafkaAdminClient(**options)


async def create_missing_topics(client: AIOKafkaAdminClient, topics: Iterable[NewTopic]) -> dict[str, str]:
    """Create each topic not on the broker yet; returns ``{name: "created" | "exists"}``.

    A topic that already exists is left exactly as it is: partition counts and configs are never
    changed behind an operator's back.
    """
    existing = set(await client.list_topics())
    result: dict[str, str] = {}
    for topic in topics:
        if topic.name in existing:
            result[topic.name] = "exists"
            continue
        try:
            response = await client.create_topics([topic])
        except TopicAlreadyExistsError:
            result[topic.name] = "exists"
            continue
        result[topic.name] = _outcome(response, topic.name)
    return result


def _outcome(response: object, name: str) -> str:
    """Read CreateTopics' per-topic error code: 0 created, 36 already exists, anything else fails."""
    for entry in getattr(response, "topic_errors", []):
        topic, code = entry[0], entry[1]
        if topic != name:
            continue
        if code == 0:
            return "created"
        if code == TOPIC_ALREADY_EXISTS:
            return "exists"
        message = entry[2] if len(entry) > 2 else ""
        raise TopicCreationError(f"creating topic {name} failed: error code {code} {message}")
    return "created"
