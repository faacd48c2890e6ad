"""`npcflow replay` on the embedded stack: a window found by time, what-if reports, sandbox, export.

A recorded run is made by the real pipeline (router and scripted workers as processes); the
replays read it back from the broker. The window test writes requests with known timestamps in
batches, so the start of the window falls inside a batch: the replay trusts the broker's
``offsets_for_times`` answer there, and must count exactly the requests inside the window.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from pipeline import kafka as kafka_clients
from pipeline.client import NPCClient
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from replay.run import ReplayOptions, run_replay
from replay.sandbox import REPLAY_OF_CONTEXT, Sandbox
from tests.integration.kafka_util import read_topic
from topics.catalogue import OUTPUTS, REPLIES, REQUESTS, Tier
from topics.fields import Sla
from topics.policy import RoutingPolicy
from topics.schemas import Output, Reply, Request

ENGINES = {
    Tier.GOLD: "scripted:latency_ms=1",
    Tier.SILVER: "scripted:latency_ms=2",
    Tier.BRONZE: "scripted:latency_ms=3",
}
#: The recorded traffic: (how many, sla, max_tokens, tier the default policy picks).
TRAFFIC = [
    (12, Sla.REALTIME, 8, Tier.GOLD),
    (14, Sla.INTERACTIVE, 64, Tier.SILVER),
    (3, Sla.REALTIME, 64, Tier.SILVER),  # contradictory: Gold allows 8 tokens → demoted to Silver
    (6, Sla.ASYNC, 100, Tier.BRONZE),
    (2, Sla.ASYNC, 1500, Tier.BRONZE),  # the candidate policy below cannot serve these
]
INVALID = [b"{not json", b'{"request_id": "x"}']
VALID = sum(n for n, *_ in TRAFFIC)


def request(sla: Sla, max_tokens: int, n: int, created_ms: int | None = None) -> Request:
    return Request(
        request_id=f"rec-{uuid.uuid4().hex[:10]}-{n}",
        npc_id=f"npc-{n % 7}",
        tenant_id="gs-replay",
        prompt="Where is the mill?",
        max_tokens=max_tokens,
        sla=sla,
        latency_budget_ms=600_000,
        created_at_ms=created_ms or int(time.time() * 1000),
    )


def candidate_policy(tmp: Path) -> Path:
    """Realtime goes to Silver; Bronze takes at most 1000 tokens (the 1500-token requests dead-letter)."""
    default = yaml.safe_load(Path("topics/policy.yaml").read_text())
    default["slas"]["realtime"]["tier"] = "silver"
    default["tiers"]["bronze"]["max_tokens"] = 1000
    path = tmp / "candidate.yaml"
    path.write_text(yaml.safe_dump(default))
    return path


@pytest.fixture(scope="module")
def recorded(stack: StackEndpoints, settings: Settings, prefix: str, work_dir: Path) -> dict:
    """Run the pipeline on TRAFFIC + INVALID under ``prefix``; the window that holds it."""
    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": prefix}
    since = int(time.time() * 1000) - 1

    async def send() -> list[Reply]:
        async with NPCClient(settings.kafka_bootstrap or "", tenant_id="gs-replay", prefix=prefix) as client:
            producer = kafka_clients.producer(settings, "test-replay")
            await producer.start()
            for raw in INVALID:
                await producer.send_and_wait(REQUESTS.name(prefix), raw, key=b"bad")
            await producer.stop()
            cases = [request(sla, tokens, i) for count, sla, tokens, _ in TRAFFIC for i in range(count)]
            return await asyncio.gather(*(client.request(r, timeout_s=90) for r in cases))

    with PipelineProcesses(env, work_dir / "recorded", engines=ENGINES):
        replies = asyncio.run(send())
        time.sleep(1.0)  # decisions and outputs are sent with a linger
    assert len(replies) == VALID
    return {"since": since, "until": int(time.time() * 1000), "replies": replies}


def options(prefix: str, recorded: dict, **changes: object) -> ReplayOptions:
    return ReplayOptions(
        source_prefix=prefix,
        since_ms=recorded["since"],
        until_ms=recorded["until"],
        grace_ms=5_000,
        **changes,  # type: ignore[arg-type]
    )


def test_the_same_policy_predicts_the_recorded_tiers(settings: Settings, prefix: str, recorded: dict) -> None:
    summary = asyncio.run(run_replay(settings, options(prefix, recorded, policy=RoutingPolicy.load())))
    report = summary["report"]
    expected = Counter()
    for count, _, _, tier in TRAFFIC:
        expected[tier.value] += count
    assert report["requests"] == VALID + len(INVALID) and report["invalid"] == len(INVALID)
    assert report["moved"] == 0 and report["moves"] == {}, report
    for tier in Tier:
        assert report["tiers"][tier.value]["recorded_requests"] == expected[tier.value], report
        assert report["tiers"][tier.value]["predicted_requests"] == expected[tier.value], report
        assert report["tiers"][tier.value]["recorded_replies"] == expected[tier.value], report
    assert report["dead_letters"] == {"recorded": len(INVALID), "predicted": len(INVALID)}
    assert report["contradictions"] == {"recorded": 3, "predicted": 3}
    assert summary["join"]["complete"] == VALID and summary["join"]["evicted"] == 0


def test_a_changed_policy_counts_exactly_the_requests_that_move(
    settings: Settings, prefix: str, recorded: dict, tmp_path: Path
) -> None:
    policy = RoutingPolicy.load(candidate_policy(tmp_path))
    report = asyncio.run(run_replay(settings, options(prefix, recorded, policy=policy)))["report"]
    assert report["moves"] == {"gold->silver": 12, "bronze->dead_lettered": 2}, report
    assert report["moved"] == 12 and report["newly_dead_lettered"] == 2
    assert report["contradictions"]["predicted"] == 0  # Silver serves 64 tokens: nothing to demote
    silver = report["tiers"]["silver"]
    assert silver["predicted_requests"] == 14 + 3 + 12 and silver["moved_in"] == 12
    assert silver["predicted_p50_ms"] is not None and silver["predicted_cost_usd"] is not None
    assert report["tiers"]["gold"]["predicted_requests"] == 0


def test_export_has_one_row_per_request_through_the_cli(
    stack: StackEndpoints, prefix: str, recorded: dict, tmp_path: Path
) -> None:
    env = {**stack.as_env(), "NPCFLOW_TOPIC_PREFIX": prefix, "PATH": "/usr/bin:/bin"}
    rows: dict[str, list[dict]] = {}
    for name in ("rows.parquet", "rows.csv"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "replay",
                "--since",
                str(recorded["since"]),
                "--until",
                str(recorded["until"]),
                "--grace",
                "5",
                "--export",
                str(tmp_path / name),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["export"]["rows"] == VALID + len(INVALID), summary
    rows["parquet"] = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    with open(tmp_path / "rows.csv", newline="") as handle:
        rows["csv"] = list(csv.DictReader(handle))
    for table in rows.values():
        assert len(table) == VALID + len(INVALID)
        valid = [r for r in table if r["request_id"]]
        assert len({r["request_id"] for r in valid}) == VALID
        assert all(r["routed_tier"] and r["status"] == "ok" for r in valid), valid[0]
        assert sum(1 for r in table if r["recorded_outcome"] == "dead_lettered") == len(INVALID)
    sent = {reply.request_id: reply for reply in recorded["replies"]}
    for row in rows["parquet"]:
        if row["request_id"]:
            assert row["served_by"] == sent[row["request_id"]].served_by.value
            assert row["routed_tier"] == sent[row["request_id"]].tier.value


def test_into_replays_into_a_sandbox_where_every_request_is_answered(
    stack: StackEndpoints, settings: Settings, prefix: str, recorded: dict, work_dir: Path
) -> None:
    sandbox_prefix = f"sb{uuid.uuid4().hex[:6]}."
    asyncio.run(create_embedded_topics(settings, sandbox_prefix))
    env = stack.as_env() | {"NPCFLOW_TOPIC_PREFIX": sandbox_prefix}
    with PipelineProcesses(env, work_dir / "sandbox", engines=ENGINES):
        sandbox = Sandbox(settings, sandbox_prefix, prefix, speed=4.0, keep_links=True)
        replayed = options(prefix, recorded, into=sandbox_prefix)
        summary = asyncio.run(run_replay(settings, replayed, sandbox=sandbox))
        assert summary["sandbox"]["sent"] == VALID + len(INVALID) and summary["sandbox"]["invalid"] == 2
        kafka = settings.kafka_bootstrap or ""
        replies = asyncio.run(read_topic(kafka, REPLIES.name(sandbox_prefix), expect=VALID, timeout_s=90))
        outputs = asyncio.run(read_topic(kafka, OUTPUTS.name(sandbox_prefix), expect=VALID, timeout_s=30))
    assert sandbox.links and len(sandbox.links) == VALID
    answered = Counter(Reply.from_bytes(r.value).request_id for r in replies)
    assert set(answered) == set(sandbox.links) and set(answered.values()) == {1}
    originals = {reply.request_id for reply in recorded["replies"]}
    links = {
        o.request.request_id: o.request.context[REPLAY_OF_CONTEXT]
        for o in map(Output.from_bytes, (r.value for r in outputs))
    }
    assert links == sandbox.links and set(links.values()) == originals


async def _two_bursts(producer: AIOKafkaProducer, topic: str, base_ms: int) -> list[str]:
    """40 + 40 requests on partition 0 with timestamps 1 ms apart, each burst sent unawaited (batches)."""
    ids: list[str] = []
    for first in (base_ms - 1000, base_ms):
        sends = []
        for i in range(40):
            r = request(Sla.INTERACTIVE, 16, i, created_ms=first + i)
            ids.append(r.request_id)
            sends.append(await producer.send(topic, r.to_bytes(), partition=0, timestamp_ms=first + i))
        await asyncio.gather(*sends)
    return ids


def window_inside_a_batch(settings: Settings) -> tuple[dict, list[str]]:
    """Replay from the middle of the second burst; returns the summary and the ids it must count."""
    prefix = f"w{uuid.uuid4().hex[:6]}."

    async def go() -> tuple[dict, list[str]]:
        await create_embedded_topics(settings, prefix)
        producer = kafka_clients.producer(settings, "test-replay-window")
        await producer.start()
        try:
            ids = await _two_bursts(producer, REQUESTS.name(prefix), base := int(time.time() * 1000) - 5000)
        finally:
            await producer.stop()
        opts = ReplayOptions(
            source_prefix=prefix,
            since_ms=base + 20,
            until_ms=base + 35,
            grace_ms=1000,
            policy=RoutingPolicy.load(),
        )
        return await run_replay(settings, opts), ids[60:75]

    return asyncio.run(go())


def test_a_window_starting_inside_a_batch_is_found_by_time(settings: Settings) -> None:
    summary, expected = window_inside_a_batch(settings)
    assert summary["report"]["requests"] == len(expected) == 15, summary
    read = summary["read"]
    assert read["method"] == "offsets_for_times", read
    # Read from the broker's answer on: neither the first burst nor the second's start is fetched.
    assert read["fetched"] <= 20, read
