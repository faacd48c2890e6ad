"""Create the topic catalogue, and tenants' reply topics, on a broker, idempotently."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from aiokafka.admin import NewTopic

from pipeline import kafka
from pipeline.config import ConfigError, Settings
from topics.catalogue import (
    CATALOGUE,
    EMBEDDED_TOPIC_CONFIG,
    REPLIES,
    TopicSpec,
    reply_topic_pattern,
)

log = logging.getLogger("npcflow.topics")


async def create_topics(
    settings: Settings,
    prefix: str | None = None,
    specs: tuple[TopicSpec, ...] = CATALOGUE,
    *,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Create every missing catalogue topic under ``prefix`` (default: the settings' prefix).

    Returns ``{name: "created" | "exists"}``. Safe to run on every deploy and from every process
    start: a topic that already exists is left exactly as it is. ``overrides`` replace catalogue
    configs (the dev stack's short retention, :data:`topics.catalogue.EMBEDDED_TOPIC_CONFIG`).
    """
    prefix = settings.topic_prefix if prefix is None else prefix
    return await _create(settings, (_new_topic(spec.name(prefix), spec, overrides) for spec in specs))


async def create_embedded_topics(
    settings: Settings, prefix: str | None = None, *, overrides: Mapping[str, str] = EMBEDDED_TOPIC_CONFIG
) -> dict[str, str]:
    """The catalogue as the dev stack, demo, tests and benchmarks create it: short retention.

    Production topics keep the catalogue's retention (:func:`create_topics` without overrides).
    """
    return await create_topics(settings, prefix, overrides=overrides)


async def create_reply_topics(
    settings: Settings,
    names: Iterable[str],
    prefix: str | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Create tenants' reply topics (``npc.replies.<tenant>[.<name>]``) with the reply topic's settings.

    A name outside the reply family is refused before anything is created.
    """
    prefix = settings.topic_prefix if prefix is None else prefix
    names = list(names)
    pattern = re.compile(reply_topic_pattern(prefix)[1:-1])
    bad = [name for name in names if not pattern.fullmatch(name)]
    if bad:
        family = f"{REPLIES.name(prefix)}.<tenant_id>[.<name>]"
        raise ConfigError(f"not a reply topic: {', '.join(map(repr, bad))}; use {family}")
    return await _create(settings, (_new_topic(name, REPLIES, overrides) for name in names))


#: Replicas per topic where the cluster has that many brokers: one broker may die (and another be
#: restarted) with ``min.insync.replicas=2`` and ``acks=all`` and no acknowledged record is lost.
REPLICATION_FACTOR = 3


def _new_topic(name: str, spec: TopicSpec, overrides: Mapping[str, str] | None = None) -> _Planned:
    return name, spec.partitions, spec.config(overrides)


_Planned = tuple[str, int, dict[str, str]]


async def _create(settings: Settings, planned: Iterable[_Planned]) -> dict[str, str]:
    admin = kafka.admin(settings)
    await admin.start()
    try:
        # aiokafka cannot ask for the broker's default.replication.factor (-1): read the cluster size.
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = max(1, min(REPLICATION_FACTOR, brokers))
        topics = [NewTopic(name, parts, replicas, topic_configs=configs) for name, parts, configs in planned]
        result = await kafka.create_missing_topics(admin, topics)
    finally:
        await admin.close()
    for topic in topics:
        if result[topic.name] == "created":
            log.info("topic %s: created (%d partitions)", topic.name, topic.num_partitions)
    return result
