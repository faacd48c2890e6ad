"""``npcflow cost report`` on the dev stack's real PostgreSQL: replies written by the real postgres
sink (``PostgresSink.write``, the same COPY + upsert a running sink does) into a freshly migrated
schema; the report's totals, per tier, tenant and NPC, equal the sums over the replies written
inside the window, with a late result replacing its fallback reply and old replies left out.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict

import pytest

from pipeline import config
from pipeline.config import Settings
from pipeline.observability.cost import Pricing
from pipeline.observability.cost_report import cost_report
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Latency, Output, Reply, Request
from workers.sinks.base import latest_per_request
from workers.sinks.migrations import migrate
from workers.sinks.postgres import PostgresSink

PRICING = Pricing.load()
NOW_MS = int(time.time() * 1000)


def output(
    i: int,
    tier: str,
    served_by: ServedBy,
    *,
    engine_ms: float = 0.0,
    served_tier: str | None = None,
    status: ReplyStatus = ReplyStatus.OK,
    age_s: float = 5.0,
    request_id: str | None = None,
) -> Output:
    """Reply ``i`` priced as ``build_reply`` prices it (the serving tier's rate for engine time)."""
    request_id = request_id or f"cost-{i:04d}"
    tenant, npc = f"gs-{'ab'[i % 2]}", f"npc-{i % 5}"
    replied = NOW_MS - int(age_s * 1000)
    served = served_tier or (tier if served_by is not ServedBy.NONE else None)
    request = Request(
        request_id=request_id,
        npc_id=npc,
        tenant_id=tenant,
        prompt=f"Say {i}.",
        max_tokens=8,
        created_at_ms=replied - 50,
    )
    reply = Reply(
        request_id=request_id,
        npc_id=npc,
        tenant_id=tenant,
        tier=Tier(tier),
        served_by=served_by,
        engine="scripted" if served_by is ServedBy.ENGINE else "",
        status=status,
        served_tier=Tier(served) if served else None,
        text=f"reply {i}",
        latency=Latency(engine_ms=engine_ms, total_ms=engine_ms + 50),
        cost_usd=PRICING.reply_cost(served or tier, served_by.value, engine_ms),
        replied_at_ms=replied,
    )
    return Output(request=request, reply=reply)


def traffic() -> tuple[list[list[Output]], list[Output]]:
    """Batches to write, and the replies the report must count (latest per request, in the last hour)."""
    batch = [
        output(0, "gold", ServedBy.CACHE),
        output(1, "gold", ServedBy.DEFAULT_INTENT),
        output(2, "gold", ServedBy.ENGINE, engine_ms=35),
        output(3, "silver", ServedBy.ENGINE, engine_ms=420),
        output(4, "silver", ServedBy.RESULT_CACHE),
        output(
            5, "silver", ServedBy.ENGINE, engine_ms=6500, served_tier="bronze", status=ReplyStatus.FALLBACK
        ),
        output(6, "bronze", ServedBy.ENGINE, engine_ms=9000),
        output(7, "silver", ServedBy.NONE, status=ReplyStatus.ERROR),
        output(8, "gold", ServedBy.CACHE),
        output(9, "bronze", ServedBy.ENGINE, engine_ms=7000, age_s=2 * 3600),  # outside --since 1h
    ]
    # A Silver request answered from Bronze first; Silver's late engine result replaces that reply,
    # though the sink receives it first (a replay, another partition's batch).
    fallback = output(
        10,
        "silver",
        ServedBy.ENGINE,
        engine_ms=8000,
        served_tier="bronze",
        status=ReplyStatus.FALLBACK,
        age_s=20,
        request_id="cost-late",
    )
    late = output(10, "silver", ServedBy.ENGINE, engine_ms=900, age_s=10, request_id="cost-late")
    batches = [batch, [late], [fallback], batch[:3]]  # the last one: a retried batch
    counted = [
        o for o in latest_per_request([*batch, fallback, late]) if o.reply.replied_at_ms > NOW_MS - 3600_000
    ]
    return batches, counted


@pytest.fixture(scope="module")
def schema(settings: Settings) -> str:
    assert settings.database_url
    name = f"cost_{uuid.uuid4().hex[:8]}"
    batches, _ = traffic()

    async def write() -> None:
        await migrate(settings.database_url or "", name)
        async with PostgresSink(settings.database_url or "", schema=name) as sink:
            for batch in batches:
                await sink.write(batch)

    asyncio.run(write())
    return name


def sums(outputs: list[Output], key: str) -> dict[str, tuple[int, int, float, float]]:
    """(replies, cached, cost, saved) per ``key`` computed from the replies themselves."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for o in outputs:
        r = o.reply
        k = {
            "tier": (r.served_tier or r.tier).value,
            "tenant": r.tenant_id,
            "npc": f"{r.tenant_id}/{r.npc_id}",
        }[key]
        acc[k][0] += 1
        acc[k][1] += r.served_by.value in ("cache", "default_intent", "result_cache")
        acc[k][2] += r.cost_usd
        acc[k][3] += PRICING.saved(r.tier.value, r.served_by.value)
    return {k: (int(v[0]), int(v[1]), v[2], v[3]) for k, v in acc.items()}


def test_report_totals_equal_the_sums_over_the_replies_written(settings: Settings, schema: str) -> None:
    _, counted = traffic()
    assert settings.database_url
    report = cost_report(settings.database_url, 3600, pricing=PRICING, schema=schema, top=100)

    total = report.total
    assert total.replies == len(counted) == 10
    assert total.cost_usd == pytest.approx(sum(o.reply.cost_usd for o in counted), rel=1e-9)
    assert total.saved_usd == pytest.approx(
        sum(PRICING.saved(o.reply.tier.value, o.reply.served_by.value) for o in counted), rel=1e-9
    )
    assert total.cost_usd > 0 and total.saved_usd > 0 and total.cached == 4
    for key, lines in (("tier", report.tiers), ("tenant", report.tenants), ("npc", report.npcs)):
        expected = sums(counted, key)
        got = {c.key: (c.replies, c.cached, c.cost_usd, c.saved_usd) for c in lines}
        assert set(got) == set(expected), key
        for k, (replies, cached, cost, saved) in expected.items():
            assert got[k][:2] == (replies, cached), (key, k)
            assert got[k][2] == pytest.approx(cost, rel=1e-9) and got[k][3] == pytest.approx(saved, rel=1e-9)
    assert report.npcs_in_window == len(report.npcs) == len(sums(counted, "npc")) == 9
    # The late Silver result won over the Bronze fallback it followed: Silver money, at Silver's rate.
    silver = next(c for c in report.tiers if c.key == "silver")
    assert silver.cost_usd == pytest.approx(PRICING.reply_cost("silver", "engine", 420 + 900), rel=1e-9)


def test_cli_prints_the_same_report_as_json_and_a_table(settings: Settings, schema: str) -> None:
    assert settings.database_url
    env = config.environ() | {
        "NPCFLOW_DATABASE_URL": settings.database_url,
        "NPCFLOW_SINK_PG_SCHEMA": schema,
    }
    run = [sys.executable, "-m", "pipeline.cli", "cost", "report", "--since", "1h"]
    as_json = subprocess.run([*run, "--json", "--tenant", "gs-a"], env=env, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    _, counted = traffic()
    mine = [o for o in counted if o.reply.tenant_id == "gs-a"]
    assert body["total"]["replies"] == len(mine)
    assert body["total"]["cost_usd"] == pytest.approx(sum(o.reply.cost_usd for o in mine), rel=1e-9)
    assert [t["key"] for t in body["tenants"]] == ["gs-a"]
    table = subprocess.run([*run, "--since", "3h"], env=env, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "bronze" in table.stdout and "total" in table.stdout and "gs-b/npc-" in table.stdout
    assert f"schema {schema}" in table.stdout
