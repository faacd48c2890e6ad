"""Create the topic catalogue on a broker, idempotently."""

from __future__ import annotations

import logging

from aiokafka.admin import NewTopic

from pipeline import kafka
from pipeline.config import Settings
from topics.catalogue import CATALOGUE, TopicSpec

log = logging.getLogger("npcflow.topics")


async def create_topics(
    settings: Settings, prefix: str | None = None, specs: tuple[TopicSpec, ...] = CATALOGUE
) -> dict[str, str]:
    """Create every missing catalogue topic under ``prefix`` (default: the settings' prefix).

    Returns ``{name: "created" | "exists"}``. Safe to run on every deploy and from every process
    start: a topic that already exists is left exactly as it is.
    """
    prefix = settings.topic_prefix if prefix is None else prefix
    topics = [
        NewTopic(spec.name(prefix), spec.partitions, replication_factor=1, topic_configs=spec.config())
        for spec in specs
    ]
    admin = kafka.admin(settings)
    await admin.start()
    try:
        result = await kafka.create_missing_topics(admin, topics)
    finally:
        await admin.close()
    for topic in topics:
        if result[topic.name] == "created":
            log.info("topic %s: created (%d partitions)", topic.name, topic.num_partitions)
    return result
