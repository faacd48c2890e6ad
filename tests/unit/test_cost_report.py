"""``npcflow cost report`` without a database: the savings table, the rendering (``--since``: test_since.py).

The queries themselves run on the real PostgreSQL in tests/integration/test_cost_report.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.observability.cost import Pricing
from pipeline.observability.cost_report import (
    CostLine,
    CostReport,
    _savings_table,
    render,
)


def test_savings_table_prices_every_cached_answer_of_every_tier() -> None:
    pricing = Pricing.load()
    table = _savings_table(pricing)
    rows = set(zip(table["s_tier"], table["s_by"], table["s_usd"], strict=True))
    assert ("gold", "cache", pricing.saved("gold", "cache")) in rows
    assert ("silver", "result_cache", pricing.saved("silver", "result_cache")) in rows
    assert len(rows) == 3 * 3 and all(usd > 0 for _, _, usd in rows)


def test_render_shows_every_breakdown_and_the_savings_share() -> None:
    line = CostLine("gold", replies=4, engine=1, cached=3, cost_usd=0.25, saved_usd=0.75)
    assert line.saved_share == 0.75
    report = CostReport(
        since_s=3600,
        since=datetime(2026, 1, 1, tzinfo=UTC),
        schema="public",
        pricing="pricing.yaml",
        total=line,
        tiers=[line],
        tenants=[CostLine("gs-a", 4, 1, 3, 0.25, 0.75)],
        npcs=[CostLine("gs-a/npc-1", 4, 1, 3, 0.25, 0.75)],
        npcs_in_window=1,
    )
    text = render(report)
    assert "last 1h" in text and "gs-a/npc-1" in text and "75.0%" in text
    assert "no replies" not in text
    assert report.as_json()["total"]["saved_share"] == 0.75


def test_an_empty_window_says_where_the_rows_come_from() -> None:
    empty = CostLine("total", 0, 0, 0, 0.0, 0.0)
    report = CostReport(3600, datetime(2026, 1, 1, tzinfo=UTC), "public", "p", empty)
    assert empty.saved_share == 0.0
    assert "npcflow run sink --sink postgres" in render(report)
