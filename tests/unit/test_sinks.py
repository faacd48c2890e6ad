"""The sink runner's batching, retries and dead letters, with in-memory sinks (no Kafka).

``make_output`` is the one builder of sample outputs for the sink tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.config import Settings, SinkSettings
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Output, Reply, Request, TierAttempt
from workers.sinks import build_sink
from workers.sinks.base import Sink, is_story_arc, latest_per_request
from workers.sinks.exceptions import SinkSetupError, SinkUnavailable
from workers.sinks.opensearch import OpenSearchSink
from workers.sinks.parsing import ParsedRecord
from workers.sinks.postgres import COLUMNS, copy_text
from workers.sinks.runner import SinkRunner


def make_output(
    i: int,
    *,
    tier: str = "bronze",
    served_tier: str | None = None,
    status: ReplyStatus = ReplyStatus.OK,
    served_by: ServedBy = ServedBy.ENGINE,
    text: str | None = None,
    run: str = "u",
    **request_fields: Any,
) -> Output:
    """Output number ``i`` of a run: a request and its reply, ids unique per ``run``."""
    now = int(time.time() * 1000)
    request_id = f"{run}-{i:06d}"
    fields: dict[str, Any] = {
        "request_id": request_id,
        "npc_id": f"npc-{i % 17}",
        "tenant_id": "gs-sinks",
        "prompt": f"Tell the tale of the dragon number {i}.",
        "max_tokens": 64,
        "created_at_ms": now,
    } | request_fields
    request = Request(**fields)
    reply = Reply(
        request_id=request_id,
        npc_id=request.npc_id,
        tenant_id=request.tenant_id,
        tier=Tier(tier),
        served_by=served_by,
        engine="scripted",
        status=status,
        text=text if text is not None else f"Once upon a time dragon {i} slept under the mountain.",
        cost_usd=0.0001 * (i % 5),
        served_tier=Tier(served_tier or tier) if served_by == ServedBy.ENGINE else None,
        replied_at_ms=now,
    )
    return Output(request=request, reply=reply)


# -- the runner's write path (retries, split, dead letters), with an in-memory sink ----------------


class MemorySink(Sink):
    """Refuses outputs whose prompt says "poison"; is unreachable for its first ``down`` writes."""

    name = "memory"

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.rows: dict[str, Output] = {}
        self.calls = 0

    async def write(self, batch: Sequence[Output]) -> None:
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            raise SinkUnavailable("store down")
        if any("poison" in o.request.prompt for o in batch):
            raise ValueError("store refuses poison")
        self.rows.update({o.reply.request_id: o for o in batch})

    async def count(self) -> int:
        return len(self.rows)


@dataclass
class FakeRecord:
    value: bytes
    offset: int
    topic: str = "npc.outputs"
    partition: int = 0


def runner_for(sink: Sink) -> tuple[SinkRunner, list[tuple[int, str]]]:
    settings = Settings(kafka_bootstrap="unused:9092", sinks=SinkSettings(retry_max_s=0.01, attempts=2))
    runner = SinkRunner(sink, settings)
    letters: list[tuple[int, str]] = []

    async def dead_letter(record: FakeRecord, reason: str, errors: object = None) -> None:
        letters.append((record.offset, reason))

    runner._dead_letter = dead_letter  # type: ignore[method-assign]
    return runner, letters


def items(outputs: list[Output]) -> list[ParsedRecord]:
    return [ParsedRecord(FakeRecord(o.to_bytes(), i), o) for i, o in enumerate(outputs)]  # type: ignore[arg-type]


async def test_a_store_that_is_down_is_retried_until_it_is_back_and_nothing_is_dead_lettered() -> None:
    sink = MemorySink(down=4)
    runner, letters = runner_for(sink)
    assert await runner._write(items([make_output(i) for i in range(10)]), 0, attempts=2)
    assert len(sink.rows) == 10 and letters == [] and runner.stats.retries == 4


async def test_only_the_record_that_fails_alone_is_dead_lettered_with_the_reason() -> None:
    sink = MemorySink()
    runner, letters = runner_for(sink)
    outputs = [make_output(i, prompt="poison" if i == 6 else f"fine {i}") for i in range(16)]
    assert await runner._write(items(outputs), 0, attempts=2)
    assert sorted(sink.rows) == sorted(o.reply.request_id for i, o in enumerate(outputs) if i != 6)
    assert letters == [(6, "memory sink: ValueError: store refuses poison")]


async def test_a_revoke_during_backoff_abandons_the_batch_uncommitted() -> None:
    sink = MemorySink(down=1000)
    runner, letters = runner_for(sink)
    runner.options = SinkSettings(retry_max_s=5.0)
    task = asyncio.create_task(runner._write(items([make_output(1)]), 0, attempts=2))
    await asyncio.sleep(0.05)
    await runner.member.release(set())  # what a revoke does: a new generation, then the runner's release
    assert await asyncio.wait_for(task, 1.0) is False
    assert letters == [] and sink.rows == {}


def test_the_latest_reply_per_request_wins_and_story_arcs_are_bronze_answers() -> None:
    first = make_output(1, status=ReplyStatus.FALLBACK)
    late = Output(request=first.request, reply=first.reply.model_copy(update={"replied_at_ms": 10**13}))
    assert latest_per_request([late, first]) == [late]
    assert is_story_arc(make_output(2, tier="bronze"))
    assert not is_story_arc(make_output(3, tier="silver"))
    assert not is_story_arc(make_output(4, tier="bronze", status=ReplyStatus.ERROR, text=""))


def test_a_story_arc_is_decided_by_the_tier_the_request_was_routed_to() -> None:
    answered = make_output(5, tier="bronze", status=ReplyStatus.FALLBACK)
    dialogue = [
        TierAttempt(tier=Tier.SILVER, outcome="failed", reason="deadline"),
        TierAttempt(tier=Tier.BRONZE, outcome="served"),
    ]
    fell_back = Output(request=answered.request, reply=answered.reply.model_copy(update={"chain": dialogue}))
    assert not is_story_arc(fell_back)  # Silver's dialogue answered by Bronze is still dialogue
    story = [TierAttempt(tier=Tier.BRONZE, outcome="served")]
    assert is_story_arc(
        Output(request=answered.request, reply=answered.reply.model_copy(update={"chain": story}))
    )


def test_postgres_copy_text_quotes_free_text_and_writes_nulls_and_story_arcs_only_for_stories() -> None:
    story = make_output(1, tier="bronze", text='line one\nsaid "hi"\tback\\slash')
    chat = make_output(2, tier="silver")
    text = copy_text([story, chat])
    assert text["story_arcs"].count(b"\n") == 1 and text["replies"].count(b"\n") == 2
    reply = text["replies"].split(b"\n")[0].split(b"\t")
    assert len(reply) == len(COLUMNS["replies"].split(", "))
    assert reply[9] == b'line one\\nsaid "hi"\\tback\\\\slash'
    assert reply[10] == b"\\N"  # intent: NULL
    assert all(
        len(line.split(b"\t")) == len(COLUMNS[table].split(", "))
        for table, data in text.items()
        for line in data.splitlines()
    )


def test_opensearch_routes_story_arcs_and_dialogue_by_request_id() -> None:
    sink = OpenSearchSink("http://unused", prefix="p.")
    body = sink.bulk_body([make_output(1), make_output(2, tier="gold"), make_output(3, tier="gold", text="")])
    actions = [json.loads(line) for line in body.splitlines()[::2]]
    assert actions == [
        {"index": {"_index": "p.npcflow-story-arcs", "_id": "u-000001"}},
        {"index": {"_index": "p.npcflow-dialogue", "_id": "u-000002"}},
    ]


@pytest.mark.parametrize("name", ["postgres", "s3", "opensearch", "redis", "nope"])
def test_build_sink_names_what_is_missing(name: str) -> None:
    settings = Settings(kafka_bootstrap="unused:9092")
    if name == "s3":  # S3 needs no URL (AWS's default endpoint)
        assert build_sink(name, settings).name == "s3"
        return
    with pytest.raises(SinkSetupError):
        build_sink(name, settings)


def test_postgres_timestamps_are_exact_to_the_millisecond_and_json_columns_parse_back() -> None:
    from datetime import UTC, datetime

    from workers.sinks.postgres import _at, _jsonb

    for ms in (0, 999, 1_000, 1_795_842_636_248, 1_795_842_636_001, 4_102_444_800_000):
        assert datetime.fromisoformat(_at(ms) + ":00") == datetime.fromtimestamp(ms / 1000, UTC)
    value = {"zone": "north\\east\tx", "n": 2.5, "big": 2**70, "ok": True, "é": "ü"}
    copy_escapes = {"t": "\t", "n": "\n", "r": "\r"}
    unquoted = re.sub(r"\\(.)", lambda m: copy_escapes.get(m[1], m[1]), _jsonb(value, "{}"))
    assert json.loads(unquoted) == value
    assert _jsonb({}, "{}") == "{}" and _jsonb([], "[]") == "[]"


async def test_offsets_are_committed_behind_the_next_write_and_in_order() -> None:
    from aiokafka import TopicPartition

    runner, _ = runner_for(MemorySink())
    tp = TopicPartition("npc.outputs", 0)
    committed: list[dict[TopicPartition, int]] = []

    class SlowFirstCommit:
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            await asyncio.sleep(0.05 if offsets[tp] == 3 else 0)  # the first batch's commit is slow
            committed.append(dict(offsets))

    runner.member._consumer = SlowFirstCommit()  # type: ignore[assignment]
    runner.member._owned = {tp}  # the group assigned it
    outputs = [make_output(i) for i in range(6)]
    batch = items(outputs)
    await runner._flush(batch[:3])
    await runner._flush(batch[3:])  # written while the first batch's commit is still under way
    assert committed == [] and runner.stats.written == 6
    await runner._commits()
    assert committed == [{tp: 3}, {tp: 6}]
