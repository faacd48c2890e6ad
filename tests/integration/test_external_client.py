"""A game server that is not Python: librdkafka (through confluent-kafka) built from the exported files only.

It reads the topic names and consumer settings from ``asyncapi.yaml``, validates what it sends
against ``request.schema.json``, registers its own reply topic, produces requests and reads its
replies by exact topic name — what a C++ or C# server does with librdkafka.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from pipeline.config import Settings
from pipeline.topic_admin import create_reply_topics
from topics.catalogue import Tier
from topics.export import export

TENANT = "gs-cpp-1"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> Path:
    directory = tmp_path_factory.mktemp("exported")
    export(directory, prefix)
    return directory


def test_a_librdkafka_client_built_from_the_exported_files_gets_its_replies(
    stack: StackEndpoints, settings: Settings, kafka: str, prefix: str, work_dir: Path, exported: Path
) -> None:
    asyncapi = yaml.safe_load((exported / "asyncapi.yaml").read_text())
    schema = json.loads((exported / "request.schema.json").read_text())
    intake = asyncapi["channels"]["npc_requests"]["address"]
    reply_family = asyncapi["channels"]["npc_replies_tenant"]["address"]
    reply_topic = reply_family.replace("{tenant}", TENANT)
    consumer_settings = asyncapi["info"]["x-consumer-settings"]
    asyncio.run(create_reply_topics(settings, [reply_topic], prefix))

    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"{TENANT}-replies",
            "session.timeout.ms": consumer_settings["session.timeout.ms"],
            "heartbeat.interval.ms": consumer_settings["heartbeat.interval.ms"],
            "fetch.wait.max.ms": consumer_settings["fetch.wait.max.ms"],
            "enable.auto.commit": consumer_settings["enable.auto.commit"],
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(reply_topic, timeout=10).topics[reply_topic].partitions
    # From the end, explicitly: assigned without an offset, librdkafka first fetches the group's
    # committed one, and if that meets a coordinator still loading (a fresh cluster) it never
    # retries and never starts fetching (librdkafka#5586; this test failed 2 of 3 runs alone).
    consumer.assign([TopicPartition(reply_topic, p, OFFSET_END) for p in partitions])
    producer = Producer({"bootstrap.servers": kafka, "linger.ms": 0})

    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix}
    engines = {Tier.SILVER: "scripted:latency_ms=1"}
    with PipelineProcesses(env, work_dir, workers={Tier.SILVER: 1}, engines=engines):
        sent: set[str] = set()
        for i in range(5):
            body = {
                "request_id": f"cpp-{uuid.uuid4().hex[:12]}",
                "npc_id": f"npc-{i}",
                "tenant_id": TENANT,
                "prompt": "Greet the traveller.",
                "max_tokens": 16,
                "sla": "interactive",
                "latency_budget_ms": 5000,
                "created_at_ms": int(time.time() * 1000),
                "reply_topic": reply_topic,
            }
            jsonschema.validate(body, schema)  # what the C++ client checks before sending
            producer.produce(intake, key=body["npc_id"].encode(), value=json.dumps(body).encode())
            sent.add(body["request_id"])
        assert producer.flush(10) == 0

        replies: dict[str, dict] = {}
        deadline = time.monotonic() + 30
        while len(replies) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            reply = json.loads(message.value())
            assert message.key().decode() == reply["request_id"]
            replies[reply["request_id"]] = reply
    consumer.close()

    assert set(replies) == sent
    assert {r["status"] for r in replies.values()} == {"ok"}
    assert {r["tenant_id"] for r in replies.values()} == {TENANT}
