"""At-least-once: a worker killed mid-load loses nothing; its unfinished requests are served again."""

from __future__ import annotations

from pathlib import Path

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from pipeline import kafka as kafka_clients
from pipeline.config import Settings
from tests.integration.kafka_util import read_topic
from topics.catalogue import REPLIES, REQUESTS_GOLD, Tier
from topics.fields import Sla
from topics.headers import deadline_headers, now_ms
from topics.schemas import Reply, Request


def gold_worker(stack: StackEndpoints, prefix: str, work: Path) -> PipelineProcesses:
    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix, "NPCFLOW_MAX_IN_FLIGHT": "1"}
    return PipelineProcesses(
        env, work, routers=0, workers={Tier.GOLD: 1}, engines={Tier.GOLD: "scripted:latency_ms=100"}
    )


def answered(records: list) -> set[str]:
    return {Reply.from_bytes(r.value).request_id for r in records}


async def test_requests_of_a_killed_worker_are_served_by_its_successor(
    stack: StackEndpoints, settings: Settings, kafka: str, prefix: str, work_dir: Path
) -> None:
    requests = [
        Request(
            request_id=f"replay-{i}",
            npc_id=f"npc-{i}",
            tenant_id="gs-test",
            prompt="Wave.",
            max_tokens=8,
            sla=Sla.REALTIME,
            created_at_ms=now_ms(),
        )
        for i in range(30)
    ]
    wanted = {r.request_id for r in requests}
    first = gold_worker(stack, prefix, work_dir / "first")
    first.start()
    try:
        producer = kafka_clients.producer(settings, "test-replay")
        await producer.start()
        deadline = now_ms() + 300_000
        for r in requests:
            await producer.send(
                REQUESTS_GOLD.name(prefix),
                r.to_bytes(),
                key=r.npc_id.encode(),
                headers=deadline_headers(deadline, "gold"),
            )
        await producer.stop()
        some = await read_topic(kafka, REPLIES.name(prefix), until=lambda rs: len(answered(rs)) >= 5)
        assert 5 <= len(answered(some)) < len(wanted)  # killed mid-load, with work left
        first.procs[0][0].popen.kill()  # type: ignore[union-attr]
    finally:
        first.stop()
    with gold_worker(stack, prefix, work_dir / "second"):
        records = await read_topic(
            kafka, REPLIES.name(prefix), until=lambda rs: wanted <= answered(rs), timeout_s=90
        )
    assert wanted <= answered(records)  # nothing lost; a replayed request may have been answered twice
