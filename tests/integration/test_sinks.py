"""The sinks on the real servers: N outputs → exactly N rows, objects, documents and cache entries.

Through a kill -9 of every sink process mid-stream and its restart, a replay of ``npc.outputs``
from the beginning, a store that is down while the others write, and records that can never be
written (dead-lettered with the reason). Each test has topics, a PostgreSQL schema, an S3 key
prefix, OpenSearch indices and Redis keys of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psycopg
import redis.asyncio as aioredis

from devstack.endpoints import StackEndpoints
from devstack.launchers import free_ports
from devstack.processes import PipelineProcesses
from pipeline import kafka
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from tests.integration.kafka_util import eventually, read_topic
from tests.unit.test_sinks import make_output
from topics.catalogue import OUTPUTS, SINK_DLQ, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.rejections import DeadLetter
from topics.schemas import Output, TierAttempt
from workers.sinks import SINKS, build_sink
from workers.sinks.migrations import migrate
from workers.sinks.postgres import COLUMNS
from workers.sinks.postgres_rows import table_rows
from workers.sinks.runner import SinkRunner

NAMES = tuple(SINKS)


async def isolated(settings: Settings, **sink_options: object) -> Settings:
    """Settings with a fresh topic prefix (topics created) and a fresh, migrated PostgreSQL schema."""
    tag = uuid.uuid4().hex[:8]
    prefix, schema = f"s{tag}.", f"sinks_{tag}"
    await create_embedded_topics(settings, prefix)
    assert settings.database_url
    await migrate(settings.database_url, schema)
    options = settings.sinks.with_(pg_schema=schema, batch_size=25, batch_ms=50, retry_max_s=0.5)
    return settings.with_(topic_prefix=prefix, sinks=options.with_(**sink_options))


async def produce(settings: Settings, outputs: Sequence[Output | bytes], per_s: float | None = None) -> None:
    producer = kafka.producer(settings, "test-sinks")
    await producer.start()
    try:
        for output in outputs:
            raw = output if isinstance(output, bytes) else output.to_bytes()
            key = b"raw" if isinstance(output, bytes) else output.reply.request_id.encode()
            await producer.send(OUTPUTS.name(settings.topic_prefix), raw, key=key)
            if per_s:
                await asyncio.sleep(1 / per_s)
        await producer.flush()
    finally:
        await producer.stop()


async def counts(settings: Settings, names: Sequence[str] = NAMES) -> dict[str, int]:
    result = {}
    for name in names:
        async with build_sink(name, settings) as sink:
            result[name] = await sink.count()
    return result


async def wait_counts(
    settings: Settings, expected: int, names: Sequence[str] = NAMES, timeout_s: float = 60
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await counts(settings, names)
        if all(v >= expected for v in seen.values()) or time.monotonic() > deadline:
            await asyncio.sleep(1.0)  # a duplicate or a late write would show up now
            return await counts(settings, names)
        await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def running(runner: SinkRunner) -> AsyncIterator[SinkRunner]:
    await runner.start()
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.request_stop()
        await task
        await runner.stop()


async def pg_rows(settings: Settings) -> dict[str, int]:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await conn.execute(f"SET search_path TO {settings.sinks.pg_schema}")
        rows = {}
        for table in ("requests", "replies", "story_arcs", "costs"):
            cur = await conn.execute(f"SELECT count(*), count(DISTINCT request_id) FROM {table}")
            total, distinct = await cur.fetchone()  # type: ignore[misc]
            assert total == distinct
            rows[table] = total
        return rows


def sink_env(stack: StackEndpoints, settings: Settings) -> dict[str, str]:
    return stack.as_env() | {
        "NPCFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "NPCFLOW_SINK_PG_SCHEMA": settings.sinks.pg_schema,
        "NPCFLOW_SINK_BATCH_SIZE": str(settings.sinks.batch_size),
        "NPCFLOW_SINK_BATCH_MS": str(settings.sinks.batch_ms),
        # A restarted member joins in about half the session timeout on the embedded broker.
        "NPCFLOW_SESSION_TIMEOUT_S": "2",
    }


async def test_kill_9_of_every_sink_mid_stream_then_a_replay_leaves_exactly_n_of_everything(
    stack: StackEndpoints, settings: Settings, work_dir: Path
) -> None:
    s = await isolated(settings)
    n = 300
    outputs = [make_output(i, run=s.topic_prefix.rstrip(".")) for i in range(n)]
    procs = PipelineProcesses(sink_env(stack, s), work_dir / s.topic_prefix, ready_timeout_s=60)
    argv = [sys.executable, "-m", "pipeline.cli", "run", "sink", "--sink"]
    try:
        for name in NAMES:
            procs.spawn(f"sink-{name}", [*argv, name])
        await asyncio.to_thread(procs.wait_ready)
        producing = asyncio.create_task(produce(s, outputs, per_s=150))
        await asyncio.sleep(1.0)
        before = await counts(s)
        for proc, _ in procs.procs:
            os.kill(proc.pid, signal.SIGKILL)
        assert not producing.done()
        assert all(v < n for v in before.values()), before  # killed before everything was written
        assert sum(before.values()) > 0, before  # ... and after some was
        procs.procs.clear()
        for name in NAMES:
            procs.spawn(f"sink-{name}-again", [*argv, name])
        await asyncio.to_thread(procs.wait_ready)
        await producing
        assert await wait_counts(s, n) == {name: n for name in NAMES}
    finally:
        procs.stop()
    assert await pg_rows(s) == {"requests": n, "replies": n, "story_arcs": n, "costs": n}

    # Replay npc.outputs from the beginning (a new group reads every record again): still N.
    for name in NAMES:
        replay = SinkRunner(build_sink(name, s), s, group_id=f"{s.topic_prefix}replay-{name}")
        async with running(replay):
            await eventually(lambda r=replay: r.stats.written >= n, timeout_s=30)
            assert replay.stats.written == n
    assert await counts(s) == {name: n for name in NAMES}
    assert await pg_rows(s) == {"requests": n, "replies": n, "story_arcs": n, "costs": n}


async def test_a_store_that_is_down_holds_up_no_other_sink_and_loses_nothing(settings: Settings) -> None:
    s = await isolated(settings)
    n = 60
    down = s.with_(database_url=f"postgresql://postgres@127.0.0.1:{free_ports(1)[0]}/test")
    await produce(s, [make_output(i, run=s.topic_prefix.rstrip(".")) for i in range(n)])
    async with running(SinkRunner(build_sink("postgres", down), down)) as stuck:
        async with running(SinkRunner(build_sink("redis", s), s)):
            assert await wait_counts(s, n, ["redis"], timeout_s=30) == {"redis": n}
        assert stuck.stats.retries > 0 and stuck.stats.written == 0 and stuck.stats.dead_lettered == 0
    # PostgreSQL is back: the same group resumes from its (uncommitted) start and writes everything.
    async with running(SinkRunner(build_sink("postgres", s), s)):
        assert await wait_counts(s, n, ["postgres"], timeout_s=30) == {"postgres": n}


async def test_records_that_can_never_be_written_are_dead_lettered_with_the_reason(
    settings: Settings,
) -> None:
    s = await isolated(settings)
    run = s.topic_prefix.rstrip(".")
    good = [make_output(i, run=run) for i in range(20)]
    nul = make_output(99, run=run, text="a story with a \x00 inside")  # PostgreSQL text refuses NUL
    await produce(s, [*good[:10], b"{not json", nul, *good[10:]])
    async with running(SinkRunner(build_sink("postgres", s), s)) as runner:
        assert await wait_counts(s, 20, ["postgres"], timeout_s=30) == {"postgres": 20}
    assert runner.stats.dead_lettered == 2
    letters = [
        DeadLetter.from_bytes(r.value)
        for r in await read_topic(s.require_kafka(), SINK_DLQ.name(s.topic_prefix), expect=2, timeout_s=15)
    ]
    assert {letter.original() for letter in letters} == {b"{not json", nul.to_bytes()}
    assert {letter.source_topic for letter in letters} == {OUTPUTS.name(s.topic_prefix)}
    reasons = sorted(letter.reason for letter in letters)
    assert reasons[0].startswith("not a valid output:"), reasons
    assert reasons[1].startswith("postgres sink: DataError: PostgreSQL text fields cannot contain NUL")
    assert {letter.stage for letter in letters} == {"sink"}


async def test_the_postgres_sinks_rows_are_the_bare_clients_rows_on_both_paths(settings: Settings) -> None:
    """The sink's own COPY text (fast path) and its upserts (replay path) store :func:`table_rows`."""
    s = await isolated(settings)
    run = s.topic_prefix.rstrip(".")
    outputs = [
        make_output(
            1,
            run=run,
            text='a "tale"\twith\nbreaks\\ and é',
            tools=["rag_search"],
            context={"zone": "north\\east", "n": 2.5, "ok": True},
            sla=Sla.ASYNC,
            latency_budget_ms=900,
        ),
        make_output(2, run=run, tier="silver", served_tier="bronze", status=ReplyStatus.FALLBACK),
        make_output(3, run=run, tier="gold", status=ReplyStatus.ERROR, served_by=ServedBy.NONE, text=""),
    ]
    first = outputs[1]
    chained = first.reply.model_copy(
        update={
            "replied_at_ms": first.reply.replied_at_ms + 5,
            "status": ReplyStatus.OK,
            "late": True,
            "chain": [TierAttempt(tier=Tier.SILVER, outcome="failed", reason="timeout\tafter 2 s")],
        }
    )
    newer = Output(request=first.request, reply=chained)
    sink = build_sink("postgres", s)
    async with sink:
        await sink.write(outputs)
        assert await stored(s) == expected_rows(outputs)
        await sink.write([*outputs, newer])  # every row exists: the upsert path, the newer reply wins
        assert sink.upserts == 1  # type: ignore[attr-defined]
    assert await stored(s) == expected_rows([outputs[0], newer, outputs[2]])


def expected_rows(outputs: Sequence[Output]) -> dict[str, list[tuple[object, ...]]]:
    rows = table_rows(outputs)
    for table, cols in COLUMNS.items():  # JSON columns come back parsed
        json_at = [i for i, c in enumerate(cols.split(", ")) if c in ("tools", "context", "chain")]
        rows[table] = sorted(
            tuple(json.loads(v) if i in json_at else v for i, v in enumerate(row))  # type: ignore[arg-type]
            for row in rows[table]
        )
    return rows


async def stored(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await conn.execute(f"SET search_path TO {settings.sinks.pg_schema}")
        result = {}
        for table, cols in COLUMNS.items():
            cur = await conn.execute(f"SELECT {cols} FROM {table} ORDER BY request_id")  # type: ignore[arg-type]
            result[table] = sorted(await cur.fetchall())
        return result


async def test_the_redis_sinks_script_stores_the_pipelines_keys_values_and_ttl(settings: Settings) -> None:
    """One EVALSHA per batch leaves what a pipeline of SET … EX of :meth:`entries` leaves, in order."""
    s = await isolated(settings)
    run = s.topic_prefix.rstrip(".")
    story = make_output(1, run=run)
    error = make_output(2, run=run, tier="gold", status=ReplyStatus.ERROR, served_by=ServedBy.NONE, text="")
    late = Output(request=story.request, reply=story.reply.model_copy(update={"text": "later", "late": True}))
    sink = build_sink("redis", s)
    assert s.redis_url
    r = aioredis.from_url(s.redis_url)
    try:
        async with sink:
            await r.script_flush()  # the first write loads the script again (NOSCRIPT)
            await sink.write([sink.encode(story), error])
            await sink.write([story, error, late])  # a replay, then a later reply to the same request
            cache = sink.cache  # type: ignore[attr-defined]
            expected = dict(pair for o in (story, error, late) for pair in cache.entries(o))
            assert len(expected) == 4
            assert expected[cache.id_key(story.reply.request_id)] == late.reply.to_bytes()
            keys = [k async for k in r.scan_iter(match=f"{s.topic_prefix}npcflow:result:*")]
            stored = {k.decode(): await r.get(k) for k in keys}
            assert stored == expected
            for key in expected:
                assert 3590 <= await r.ttl(key) <= 3600
            assert await sink.count() == 2
    finally:
        await r.aclose()
