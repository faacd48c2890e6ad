"""Topic catalogue and reply-topic creation against the real broker, and the CLI around it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import kafka as kafka_clients
from pipeline.cli import main
from pipeline.config import ConfigError, Settings
from topics.admin import create_reply_topics, create_topics
from topics.catalogue import CATALOGUE, GAME_STATE, REPLIES, REQUESTS


async def partitions(settings: Settings, topic: str) -> int:
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
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
