"""Create the topic catalogue on a broker, idempotently."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from topics.catalogue import CATALOGUE, TopicSpec

log = logging.getLogger("npcflow.topics")


async def create_topics(
    bootstrap: str, prefix: str | None = None, specs: tuple[TopicSpec, ...] = CATALOGUE
) -> dict[str, str]:
    """Create every missing topic; returns ``{name: "created" | "exists"}``.

    Safe to run on every deploy and from every process start: a topic that already exists is
    left exactly as it is (partition counts are never changed behind an operator's back).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="npcflow-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        missing = []
        for spec in specs:
            name = spec.name(prefix)
            if name in existing:
                result[name] = "exists"
            else:
                missing.append(
                    NewTopic(name, spec.partitions, replication_factor=1, topic_configs=spec.config())
                )
        for topic in missing:
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                result[topic.name] = "exists"
                continue
            result[topic.name] = _outcome(response, topic.name)
            log.info("topic %s: %s (%d partitions)", topic.name, result[topic.name], topic.num_partitions)
        return result
    finally:
        await admin.close()


def _outcome(response: object, name: str) -> str:
    """Read CreateTopics' per-topic error code: 0 created, 36 already exists, anything else fails."""
    for entry in getattr(response, "topic_errors", []):
        topic, code = entry[0], entry[1]
        if topic != name:
            continue
        if code == 0:
            return "created"
        if code == 36:
            return "exists"
        message = entry[2] if len(entry) > 2 else ""
        raise RuntimeError(f"creating topic {name} failed: error code {code} {message}")
    return "created"
