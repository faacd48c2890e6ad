"""A worker prices a cached answer's savings with NPCFLOW_PRICING_FILE, like its replies' cost."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.observability import families
from pipeline.observability.cost import Pricing
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Reply
from workers.hooks import standard_hooks
from workers.serving import Replied

PRICES = """
tiers:
  gold: {billing: gpu, usd_per_hour: 36.0, concurrency: 1, reference_engine_ms: 1000}
  silver: {billing: gpu, usd_per_hour: 4.0}
  bronze: {billing: sagemaker, usd_per_hour: 1.5}
"""


def cached_reply(tenant: str) -> Replied:
    reply = Reply(
        request_id="hook-1",
        npc_id="npc-1",
        tenant_id=tenant,
        tier=Tier.GOLD,
        served_by=ServedBy.CACHE,
        status=ReplyStatus.OK,
        replied_at_ms=int(time.time() * 1000),
    )
    return Replied(reply=reply, output=None, reply_topic="npc.replies", outputs_topic="npc.outputs")


def saved(tenant: str) -> float:
    return families.COST_SAVED_USD.labels("gold", tenant)._value.get()


def test_savings_use_the_given_pricing_file(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(PRICES)
    standard_hooks(Pricing.load(path)).replied(cached_reply("gs-hooks-file"))
    # One second of a $36/h instance: one cent.
    assert saved("gs-hooks-file") == 0.01


def test_without_a_file_the_packaged_prices_apply() -> None:
    standard_hooks().replied(cached_reply("gs-hooks-default"))
    assert saved("gs-hooks-default") == Pricing.load().saved("gold", "cache") > 0
