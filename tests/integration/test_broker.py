"""Both embedded brokers, side by side: the behaviour npcflow relies on, and what each gets wrong.

Each test runs once per broker (noida-db and Tansu), started here from its launcher on a free port.
A test pinned to a broker's known bug fails when the broker is fixed: then the matching
work-around (docs/architecture.md §5) can go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.broker import check_offsets
from devstack.launchers import BROKERS, free_ports
from devstack.probes import wait_until
from devstack.supervise import stop_processes
from pipeline import kafka
from pipeline.config import Settings
from pipeline.deadlines import DEADLINE_HEADER, TIER_HEADER
from topics.catalogue import GAME_STATE, REQUESTS_GOLD, short_retention


@pytest.fixture(params=sorted(BROKERS), scope="module")
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """``Settings`` pointing at one broker of each kind (``request.param``: its name)."""
    launcher = BROKERS[request.param](state_dir=tmp_path_factory.mktemp(request.param), port=free_ports(1)[0])
    launcher.prepare()
    proc = launcher.process()
    proc.start(die_with_parent=True)
    try:
        wait_until(
            launcher.broker, lambda: launcher.ready(5.0), time.monotonic() + 30, alive=proc.exit_problem
        )
        yield Settings(kafka_bootstrap=launcher.endpoint(), embedded_broker=launcher.broker)
    finally:
        stop_processes([proc])


def test_list_offsets_and_offsets_for_times(broker: Settings) -> None:
    found = asyncio.run(check_offsets(broker))
    if broker.embedded_broker == "noida":
        assert found.ok, found.as_dict()
    else:
        # Tansu 0.6: ListOffsets(latest) is the last batch's base offset + 1; offsets_for_times 0.
        assert not found.latest_ok and not found.for_time_ok, found.as_dict()


async def _create(settings: Settings, *topics: NewTopic) -> None:
    admin = kafka.admin(settings)
    await admin.start()
    try:
        await kafka.create_missing_topics(admin, topics)
    finally:
        await admin.close()


def test_catalogue_overrides_reach_the_broker(broker: Settings) -> None:
    """The embedded stack's short retention is a per-topic config the broker stores (and reports)."""
    overrides = short_retention(retention_ms=5000, segment_ms=1000)
    gold = NewTopic("o.gold", 2, 1, topic_configs=REQUESTS_GOLD.config(overrides))
    state = NewTopic("o.state", 2, 1, topic_configs=GAME_STATE.config(overrides))
    assert state.topic_configs == {"cleanup.policy": "compact", "segment.ms": "1000"}

    async def described() -> dict[str, dict[str, str]]:
        await _create(broker, gold, state)
        admin = kafka.admin(broker)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in ("o.gold", "o.state")]
            )
        finally:
            await admin.close()
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                out[name] = {entry[0]: entry[1] for entry in entries}
        return out

    configs = asyncio.run(described())
    if broker.embedded_broker == "noida":
        assert configs["o.gold"]["retention.ms"] == "5000"
        assert configs["o.gold"]["segment.ms"] == "1000"
        assert configs["o.state"]["cleanup.policy"] == "compact"


def test_retention_deletes_old_segments_on_noida_and_tansu_keeps_everything(broker: Settings) -> None:
    """What keeps noida-db flat: records older than retention.ms leave once their segment rolled.

    Tansu 0.6 ignores retention.ms (docs/architecture.md §5): its partitions only grow, which is why
    benchmarks start each segment on fresh topics.
    """

    async def start_offset_after_retention() -> int:
        topic = NewTopic("r.short", 1, 1, topic_configs=short_retention(retention_ms=1000, segment_ms=300))
        await _create(broker, topic)
        producer = kafka.producer(broker, "retention-test")
        await producer.start()
        try:
            for _ in range(50):
                await producer.send_and_wait("r.short", b"x" * 100)
            await asyncio.sleep(4.0)
            await producer.send_and_wait("r.short", b"new")  # rolls the segment that held the 50
            await asyncio.sleep(2.0)
        finally:
            await producer.stop()
        consumer = kafka.consumer(broker, "retention-test")
        await consumer.start()
        try:
            tp = TopicPartition("r.short", 0)
            return (await consumer.beginning_offsets([tp]))[tp]
        finally:
            await consumer.stop()

    start = asyncio.run(start_offset_after_retention())
    if broker.embedded_broker == "noida":
        assert start >= 50
    else:
        assert start == 0


def test_headers_and_timestamps_survive_a_busy_partition(broker: Settings) -> None:
    """The deadline travels as a header: every record must come back with its own headers and time."""

    async def roundtrip() -> list[str]:
        await _create(broker, NewTopic("h.busy", 3, 1))
        producer = kafka.producer(broker, "headers-test")
        consumer = kafka.consumer(broker, "headers-test", "h.busy")
        await producer.start()
        await consumer.start()
        problems: list[str] = []
        try:
            sent = time.time() * 1000
            sends = []
            for i in range(2000):
                headers = [(DEADLINE_HEADER, str(i).encode()), (TIER_HEADER, b"gold")]
                sends.append(
                    await producer.send("h.busy", str(i).encode(), key=str(i).encode(), headers=headers)
                )
                if i % 100 == 0:
                    await asyncio.sleep(0.005)
            await asyncio.gather(*sends)
            seen = 0
            deadline = time.monotonic() + 20
            while seen < 2000 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        seen += 1
                        if dict(r.headers).get(DEADLINE_HEADER) != r.key:
                            problems.append(f"{r.partition}/{r.offset}: headers {r.headers} for key {r.key}")
                        if abs(r.timestamp - sent) > 60_000:
                            problems.append(
                                f"{r.partition}/{r.offset}: timestamp {r.timestamp}, sent ~{sent:.0f}"
                            )
            if seen != 2000:
                problems.append(f"read {seen} of 2000")
        finally:
            await consumer.stop()
            await producer.stop()
        return problems

    assert asyncio.run(roundtrip()) == []


def test_two_group_members_share_partitions_with_auto_commit_off(broker: Settings) -> None:
    """Our consumers never auto-commit; a second member then joins promptly on both brokers."""

    async def assignments() -> tuple[set[int], set[int], float]:
        await _create(broker, NewTopic("g.shared", 4, 1))
        quick = broker.with_(kafka=type(broker.kafka)(fetch_max_wait_ms=5, session_timeout_s=6.0))
        first = kafka.consumer(quick, "m1", "g.shared", group_id="g-test")
        second = kafka.consumer(quick, "m2", "g.shared", group_id="g-test")
        await first.start()
        began = time.monotonic()
        await second.start()
        deadline = time.monotonic() + 30
        a: set[int] = set()
        b: set[int] = set()
        while time.monotonic() < deadline:
            await asyncio.gather(first.getmany(timeout_ms=100), second.getmany(timeout_ms=100))
            a = {tp.partition for tp in first.assignment()}
            b = {tp.partition for tp in second.assignment()}
            if a and b and not a & b and len(a | b) == 4:
                break
        took = time.monotonic() - began
        await first.stop()
        await second.stop()
        return a, b, took

    a, b, took = asyncio.run(assignments())
    assert a and b and not a & b and a | b == {0, 1, 2, 3}, (a, b)
    assert took < 20, took


def test_launcher_names_its_version(tmp_path: Path) -> None:
    versions = {name: cls.version_of() for name, cls in BROKERS.items()}
    assert versions == {"noida": "noida-db 0.2.3", "tansu": "tansu 0.6.0"}
