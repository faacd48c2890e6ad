"""Durations measured in milliseconds (the events' unit) are exported in seconds."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from pipeline.observability import families
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Latency, Reply
from workers.hooks import record_reply_metrics
from workers.serving import Replied


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_reply_is_observed_in_seconds() -> None:
    reply = Reply(
        request_id="units-1",
        npc_id="npc-1",
        tenant_id="gs-units",
        tier=Tier.SILVER,
        served_by=ServedBy.ENGINE,
        status=ReplyStatus.OK,
        engine="units-engine",
        latency=Latency(engine_ms=200.0, total_ms=250.0),
        replied_at_ms=int(time.time() * 1000),
    )
    before = {
        "reply": value("npcflow_reply_latency_seconds_sum", tier="silver"),
        "engine": value("npcflow_engine_latency_seconds_sum", tier="silver", engine="units-engine"),
        "hop": value("npcflow_hop_latency_seconds_sum", tier="silver", hop="engine"),
    }
    record_reply_metrics(
        Replied(reply=reply, output=None, reply_topic="npc.replies", outputs_topic="npc.outputs")
    )
    assert value("npcflow_reply_latency_seconds_sum", tier="silver") - before["reply"] == pytest.approx(0.25)
    engine = value("npcflow_engine_latency_seconds_sum", tier="silver", engine="units-engine")
    assert engine - before["engine"] == pytest.approx(0.2)
    assert value("npcflow_hop_latency_seconds_sum", tier="silver", hop="engine") - before[
        "hop"
    ] == pytest.approx(0.2)
    # 250 ms lands in the 0.25 s bucket (Silver's budget is a bound), not in +Inf.
    bucket = value("npcflow_reply_latency_seconds_bucket", tier="silver", le="0.25")
    assert bucket >= 1


def test_a_hop_with_clock_skew_counts_as_zero_seconds() -> None:
    before = value("npcflow_hop_latency_seconds_sum", tier="bronze", hop="intake")
    count = value("npcflow_hop_latency_seconds_count", tier="bronze", hop="intake")
    families.observe_hop("bronze", "intake", -40.0)
    families.observe_hop("bronze", "intake", 40.0)
    assert value("npcflow_hop_latency_seconds_sum", tier="bronze", hop="intake") - before == pytest.approx(
        0.04
    )
    assert value("npcflow_hop_latency_seconds_count", tier="bronze", hop="intake") - count == 2
