"""Topic catalogue and reply-topic creation against the real broker, and the CLI around it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from pipeline import kafka as kafka_clients
from pipeline.cli import main
from pipeline.config import ConfigError, Settings
from pipeline.topic_admin import create_embedded_topics, create_reply_topics, create_topics
from topics.catalogue import CATALOGUE, EMBEDDED_TOPIC_CONFIG, GAME_STATE, REPLIES, REQUESTS, REQUESTS_GOLD


async def partitions(settings: Settings, topic: str) -> int:
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        [resource] = (await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]))[
            0
        ].resources
        return {name: value for name, value, *_ in resource[4]}
    finally:
        await admin.close()


def test_create_topics_is_idempotent_and_uses_the_prefix(settings: Settings) -> None:
    prefix = f"idem{uuid.uuid4().hex[:6]}."
    first = asyncio.run(create_topics(settings, prefix))
    assert first == {spec.name(prefix): "created" for spec in CATALOGUE}
    second = asyncio.run(create_topics(settings, prefix))
    assert second == {spec.name(prefix): "exists" for spec in CATALOGUE}
    assert asyncio.run(partitions(settings, REQUESTS.name(prefix))) == REQUESTS.partitions
    assert GAME_STATE.config() == {"cleanup.policy": "compact"}


def test_embedded_topics_keep_little_and_production_topics_keep_the_catalogues_retention(
    settings: Settings,
) -> None:
    prefix = f"emb{uuid.uuid4().hex[:6]}."
    asyncio.run(create_embedded_topics(settings, prefix))
    asyncio.run(create_topics(settings, f"prod{prefix}"))
    embedded = asyncio.run(topic_config(settings, REQUESTS_GOLD.name(prefix)))
    production = asyncio.run(topic_config(settings, REQUESTS_GOLD.name(f"prod{prefix}")))
    assert embedded["retention.ms"] == EMBEDDED_TOPIC_CONFIG["retention.ms"]
    assert production["retention.ms"] == str(REQUESTS_GOLD.retention_ms)


def test_topics_create_command_reads_the_environment(kafka: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prefix = f"cli{uuid.uuid4().hex[:6]}."
    monkeypatch.setenv("NPCFLOW_KAFKA_BOOTSTRAP", kafka)
    monkeypatch.setenv("NPCFLOW_TOPIC_PREFIX", prefix)
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 0, result.output
    assert f"{prefix}npc.requests: created" in result.output
    again = CliRunner().invoke(main, ["topics", "create"])
    assert f"{prefix}npc.requests: exists" in again.output


def test_topics_create_without_a_broker_says_how_to_get_one(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NPCFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("NPCFLOW_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 1
    assert "Error: no Kafka broker configured: set NPCFLOW_KAFKA_BOOTSTRAP" in result.output


def test_a_tenant_registers_its_reply_topic_and_nothing_outside_the_family(settings: Settings) -> None:
    prefix = f"rt{uuid.uuid4().hex[:6]}."
    own = f"{prefix}npc.replies.gs-eu-1.frames"
    assert asyncio.run(create_reply_topics(settings, [own], prefix)) == {own: "created"}
    assert asyncio.run(partitions(settings, own)) == REPLIES.partitions
    for bad in (f"{prefix}npc.replies.", f"{prefix}npc.replies.__consumer_offsets", f"{prefix}npc.routing"):
        with pytest.raises(ConfigError, match="not a reply topic"):
            asyncio.run(create_reply_topics(settings, [bad], prefix))


def test_topics_create_reply_topic_command(kafka: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prefix = f"cli{uuid.uuid4().hex[:6]}."
    monkeypatch.setenv("NPCFLOW_KAFKA_BOOTSTRAP", kafka)
    monkeypatch.setenv("NPCFLOW_TOPIC_PREFIX", prefix)
    result = CliRunner().invoke(main, ["topics", "create", "--reply-topic", f"{prefix}npc.replies.gs-9"])
    assert result.exit_code == 0, result.output
    assert f"{prefix}npc.replies.gs-9: created" in result.output
    refused = CliRunner().invoke(main, ["topics", "create", "--reply-topic", "npc.replies.."])
    assert refused.exit_code == 1 and "not a reply topic" in refused.output


def test_group_lag_counts_a_partition_the_group_never_committed(settings: Settings) -> None:
    """A member that has read one partition and not yet another still lags by the other's records."""
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from pipeline.observability.validate import group_lag

    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(create_embedded_topics(settings, prefix))
    topic, group = REQUESTS.name(prefix), f"{prefix}lag-group"

    async def run() -> tuple[int | None, int | None, int | None]:
        before = await group_lag(settings, group, topic)  # empty topic: nothing to serve
        producer = kafka_clients.producer(settings, "lag-test")
        await producer.start()
        try:
            for p in (0, 1):
                for _ in range(3):
                    await producer.send_and_wait(topic, b"x", partition=p)
        finally:
            await producer.stop()
        nothing_committed = await group_lag(settings, group, topic)
        consumer = kafka_clients.consumer(settings, "lag-test", group_id=group)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "")})
        finally:
            await consumer.stop()
        return before, nothing_committed, await group_lag(settings, group, topic)

    before, nothing_committed, one_committed = asyncio.run(run())
    assert before == 0
    assert nothing_committed is None
    assert one_committed == 3  # partition 1's three records, unread
