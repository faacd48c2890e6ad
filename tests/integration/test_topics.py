"""Topic catalogue creation against the real broker, and the schema export for other languages."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import jsonschema
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner

from pipeline.cli import main
from topics.admin import create_topics
from topics.catalogue import CATALOGUE, GAME_STATE, REQUESTS
from topics.schemas import EVENTS


async def partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


def test_create_topics_is_idempotent_and_uses_the_prefix(kafka: str) -> None:
    prefix = f"idem{uuid.uuid4().hex[:6]}."
    first = asyncio.run(create_topics(kafka, prefix))
    assert first == {spec.name(prefix): "created" for spec in CATALOGUE}
    second = asyncio.run(create_topics(kafka, prefix))
    assert second == {spec.name(prefix): "exists" for spec in CATALOGUE}
    assert asyncio.run(partitions(kafka, REQUESTS.name(prefix))) == REQUESTS.partitions
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


def test_schema_export_writes_json_schemas_and_asyncapi(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("*.schema.json"))
    assert names == sorted(f"{m.event_name}.schema.json" for m in EVENTS)
    for path in out.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema")

    doc = yaml.safe_load((out / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    assert {c["address"] for c in doc["channels"].values()} == {s.name("") for s in CATALOGUE}
    # Every $ref in the document points at something that exists in it.
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]
    request_schema = doc["components"]["schemas"]["Request"]
    assert request_schema["properties"]["max_tokens"]["maximum"] == 2000
