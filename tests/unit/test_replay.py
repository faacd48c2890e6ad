"""Replay without a broker: the bounded join, the what-if report, export rows, sandbox ids."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.config import Settings
from replay.bounds import Bounds, WindowError
from replay.cli import parse_offsets
from replay.export import Exporter, ExportError
from replay.histogram import Histogram
from replay.join import Entry, Join
from replay.report import WhatIf, render_table
from replay.sandbox import REPLAY_OF_CONTEXT, Sandbox, SandboxError
from replay.window import ReadStats, WindowReader, _Part
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.policy import RoutingPolicy, Unroutable
from topics.schemas import Latency, Output, Reply, Request, RoutingDecision, TokenUsage

T = ("p.npc.requests", "p.npc.routing", "p.npc.outputs")


def record(topic: str, value: bytes, ts: int, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, ts, 0, None, value, None, len(value), -1, [])


def req(n: int, sla: Sla = Sla.REALTIME, max_tokens: int = 8) -> Request:
    return Request(
        request_id=f"r{n}",
        npc_id="npc-1",
        tenant_id="gs",
        prompt="hi",
        max_tokens=max_tokens,
        sla=sla,
        created_at_ms=1_000 + n,
    )


def decision(r: Request, tier: Tier, reason: str = "sla") -> bytes:
    return RoutingDecision(
        request_id=r.request_id,
        npc_id=r.npc_id,
        tenant_id=r.tenant_id,
        tier=tier,
        sla=Sla.REALTIME,
        reason=reason,
        deadline_ms=1,
        decided_at_ms=1,
    ).to_bytes()


def output(r: Request, tier: Tier, total_ms: float = 10.0, cost: float = 0.001) -> bytes:
    reply = Reply(
        request_id=r.request_id,
        npc_id=r.npc_id,
        tenant_id=r.tenant_id,
        tier=tier,
        served_by=ServedBy.ENGINE,
        status=ReplyStatus.OK,
        text="ok",
        replied_at_ms=5,
        latency=Latency(total_ms=total_ms),
        cost_usd=cost,
        tokens=TokenUsage(completion=4),
    )
    return Output(request=r, reply=reply).to_bytes()


def policy_with_realtime_on(tier: str) -> RoutingPolicy:
    """The packaged policy's shape, with realtime requests sent to ``tier``."""
    return RoutingPolicy.from_dict(
        {
            "slas": {
                "realtime": {"tier": tier, "max_budget_ms": 16},
                "interactive": {"tier": "silver", "max_budget_ms": 250},
                "async": {"tier": "bronze", "max_budget_ms": 3600000},
            },
            "tiers": {
                "gold": {"max_tokens": 8, "tools": False, "default_budget_ms": 16},
                "silver": {"max_tokens": 200, "tools": True, "default_budget_ms": 250},
                "bronze": {"max_tokens": 1000, "tools": True, "default_budget_ms": 60000},
            },
        }
    )


def test_offsets_parse_per_partition_and_refuse_nonsense() -> None:
    assert parse_offsets(("0:10-20", "3:5-")) == {0: (10, 20), 3: (5, None)}
    assert parse_offsets(()) is None
    for bad in ("0:20-10", "x:1-2", "5"):
        with pytest.raises(WindowError):
            parse_offsets((bad,))


def test_a_fetch_is_cut_at_the_window_end_and_skips_what_precedes_since() -> None:
    """From the broker's start offset on, records before ``since`` are skipped (timestamps need not
    grow with the offset); the first at or past ``until``, or the end offset, ends the partition."""
    reader = WindowReader(Settings(kafka_bootstrap="x"), {})
    timed = _Part(TopicPartition(T[0], 0), Bounds(until_ms=200, from_ms=100), next=10, end=100)
    fetch = [
        record(T[0], b"", ts, offset) for offset, ts in ((10, 100), (11, 99), (12, 150), (13, 200), (14, 120))
    ]
    assert [r.offset for r in reader._accept(timed, fetch)] == [10, 12]
    assert timed.done and timed.next == 13 and timed.last_ts == 150

    by_offset = _Part(TopicPartition(T[0], 1), Bounds(until_ms=0, offsets={1: (5, 7)}), next=5, end=7)
    fetch = [record(T[0], b"", 10_000 + offset, offset) for offset in range(5, 9)]
    assert [r.offset for r in reader._accept(by_offset, fetch)] == [5, 6]  # the offsets' bounds only
    assert by_offset.done and by_offset.next == 7

    open_end = _Part(TopicPartition(T[1], 0), Bounds(until_ms=10**6), next=0, end=3)
    assert len(reader._accept(open_end, [record(T[1], b"", 1, 0), record(T[1], b"", 2, 1)])) == 2
    assert not open_end.done and open_end.next == 2  # one more record before the end offset


def test_read_stats_name_how_the_window_was_found() -> None:
    assert ReadStats(by_time=3).method == "offsets_for_times"
    assert ReadStats(by_time=2, by_offset=1).method == "offsets_for_times+offsets"
    assert ReadStats(from_start=3).method == "start"
    assert ReadStats().method == "none"


def test_join_matches_parts_in_any_order_and_bounds_what_it_holds() -> None:
    join = Join(*T, max_open=3, patience_ms=1000)
    a, b = req(1), req(2)
    join.add(T[2], record(T[2], output(a, Tier.GOLD), 10))  # the reply before its request
    join.add(T[0], record(T[0], a.to_bytes(), 11))
    join.add(T[1], record(T[1], decision(a, Tier.GOLD), 12))
    rows = list(join.ready())
    assert [r.request_id for r in rows] == ["r1"] and rows[0].complete and join.open == 0
    join.add(T[0], record(T[0], b.to_bytes(), 20))  # never routed: a dead letter
    join.add(T[0], record(T[0], b"{broken", 21))  # invalid: leaves at once
    assert [r.invalid is not None for r in join.ready()] == [True]
    join.advance(500)
    assert join.open == 1
    join.advance(2000)  # patience passed: leaves incomplete
    (row,) = join.ready()
    assert row.request_id == "r2" and row.recorded_outcome == "dead_lettered" and join.stats.timed_out == 1
    for n in range(10, 15):  # more than max_open at once: the oldest leave first
        join.add(T[0], record(T[0], req(n).to_bytes(), 30))
    assert join.open == 3 and join.stats.evicted == 2
    assert [r.request_id for r in join.close()] == ["r10", "r11", "r12", "r13", "r14"]


def test_orphans_without_a_request_in_the_window_are_dropped_not_reported() -> None:
    join = Join(*T, max_open=10, patience_ms=0)
    join.add(T[1], record(T[1], decision(req(9), Tier.GOLD), 1))
    assert list(join.close()) == [] and join.stats.orphans == 1


def test_what_if_counts_moves_dead_letters_and_prices_newcomers() -> None:
    join = Join(*T, max_open=10, patience_ms=0)
    gold, silver, big = req(1), req(2, Sla.INTERACTIVE, 64), req(3, Sla.ASYNC, 1500)
    for r, tier, ms in ((gold, Tier.GOLD, 5.0), (silver, Tier.SILVER, 100.0), (big, Tier.BRONZE, 900.0)):
        join.add(T[0], record(T[0], r.to_bytes(), 1))
        join.add(T[1], record(T[1], decision(r, tier), 1))
        join.add(T[2], record(T[2], output(r, tier, ms), 1))
    join.add(T[0], record(T[0], b"nope", 1))
    rows = list(join.ready())
    policy = policy_with_realtime_on("silver")
    what_if = WhatIf(policy)
    predicted = [what_if.add(row) for row in rows]
    assert predicted == [Tier.SILVER, Tier.SILVER, None, None]
    summary = what_if.summary()
    assert summary["moves"] == {"gold->silver": 1, "bronze->dead_lettered": 1}
    assert summary["moved"] == 1 and summary["newly_dead_lettered"] == 1
    assert summary["dead_letters"] == {"recorded": 1, "predicted": 2}
    silver = summary["tiers"]["silver"]
    assert silver["predicted_requests"] == 2 and silver["moved_in"] == 1
    # The newcomer is priced like Silver's recorded replies (100 ms, $0.001 each).
    assert silver["predicted_cost_usd"] == pytest.approx(0.002)
    assert 95 <= silver["predicted_p50_ms"] <= 105
    table = render_table(
        {
            "report": summary,
            "window": {"since": "a", "until": "b"},
            "read": {"events": 10, "method": "offsets_for_times", "seconds": 0.1},
        }
    )
    assert "would move 1" in table and "silver" in table


def test_what_if_decides_once_per_request_shape_exactly_as_the_policy_routes() -> None:
    """The memo is keyed by RoutingPolicy.tier_inputs: every other field varied, the same tier."""
    policy = policy_with_realtime_on("gold")
    what_if = WhatIf(policy)
    shapes = [
        {"sla": sla, "latency_budget_ms": budget, "max_tokens": tokens, "tools": tools}
        for sla in (None, *Sla)
        for budget in (None, 10, 250, 60_000)
        for tokens in (8, 64, 500, 2000)
        for tools in ([], ["rag_search"])
    ]
    for n, shape in enumerate(shapes * 3):  # each shape three times, with other fields changed
        request = Request(
            request_id=f"s{n}",
            npc_id=f"npc-{n}",
            tenant_id=f"gs-{n % 3}",
            prompt="x" * (n % 7 + 1),
            created_at_ms=1_000 + 37 * n,
            context={"k": n},
            **shape,
        )
        entry = Entry(request.request_id, raw=b"", request=request, received_ms=900 + 41 * n)
        try:
            route = policy.route(request, received_ms=entry.received_ms)
        except Unroutable:
            route = None
        assert what_if.add(entry) == (route.tier if route else None)
    assert len(what_if._memo) == len(shapes)
    summary = what_if.summary()
    assert summary["contradictions"]["predicted"] > 0 and summary["dead_letters"]["predicted"] > 0


def test_join_views_count_undecodable_decisions_and_outputs_as_unreadable() -> None:
    join = Join(*T, max_open=10, patience_ms=0, full=False)
    r = req(1)
    join.add(T[0], record(T[0], r.to_bytes(), 1))
    for bad in (b"{", b"[]", b'{"request_id": "r1", "tier": "platinum"}', b""):
        join.add(T[1], record(T[1], bad, 1))
        join.add(T[2], record(T[2], bad, 1))
    assert join.stats.unreadable == 8 and join.open == 1
    join.add(T[1], record(T[1], decision(r, Tier.GOLD), 1))
    join.add(T[2], record(T[2], output(r, Tier.GOLD, 12.5), 1))
    (row,) = join.ready()
    assert row.recorded_tier is Tier.GOLD and row.reply is not None and row.reply.latency.total_ms == 12.5


def test_histogram_percentiles_are_within_five_percent() -> None:
    h = Histogram()
    for v in range(1, 1001):
        h.add(float(v))
    assert 475 <= (h.percentile(0.5) or 0) <= 525 and 902 <= (h.percentile(0.95) or 0) <= 998
    mixed = Histogram()
    mixed.merge(h, 0.5)
    assert mixed.count == 500 and Histogram().percentile(0.5) is None


def test_export_writes_one_row_per_entry_in_parquet_and_csv(tmp_path: Path) -> None:
    join = Join(*T, max_open=10, patience_ms=0)
    r = req(1)
    join.add(T[0], record(T[0], r.to_bytes(), 1))
    join.add(T[1], record(T[1], decision(r, Tier.GOLD), 1))
    join.add(T[2], record(T[2], output(r, Tier.GOLD), 1))
    join.add(T[0], record(T[0], b"{", 2))
    rows = list(join.ready())
    for name in ("x.parquet", "x.csv"):
        exporter = Exporter(tmp_path / name, batch_rows=1)
        for row in rows:
            exporter.add(row, Tier.SILVER)
        exporter.close()
        assert exporter.rows == 2
    table = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert table[0]["request_id"] == "r1" and table[0]["routed_tier"] == "gold"
    assert table[0]["predicted_tier"] == "silver" and table[1]["invalid_reason"]
    with open(tmp_path / "x.csv", newline="") as handle:
        assert [row["request_id"] for row in csv.DictReader(handle)] == ["r1", ""]
    with pytest.raises(ExportError, match="parquet or"):
        Exporter(tmp_path / "x.json")


def test_sandbox_requests_get_new_ids_linked_to_the_originals() -> None:
    sandbox = Sandbox(Settings(kafka_bootstrap="x"), "sb.", "prod.", speed=0)
    original = req(1).model_copy(update={"reply_topic": "prod.npc.replies.gs", "created_at_ms": 5})
    value, key, orig_id = sandbox.rewrite(original.to_bytes())
    copy = Request.from_bytes(value)
    assert orig_id == "r1" and key == b"npc-1" and copy.request_id != "r1"
    assert copy.context[REPLAY_OF_CONTEXT] == "r1" and copy.reply_topic == "sb.npc.replies.gs"
    assert copy.created_at_ms > time.time() * 1000 - 5000
    assert sandbox.rewrite(b"{bad") == (b"{bad", None, None)
    with pytest.raises(SandboxError):
        Sandbox(Settings(kafka_bootstrap="x"), "prod.", "prod.")
