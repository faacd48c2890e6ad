"""``npcflow top``'s arithmetic on two scrapes in the Prometheus text format (what the processes
expose; the real processes are scraped in tests/integration/test_top.py), and its bind setting."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Settings
from pipeline.observability.scrape import Scrape
from pipeline.observability.top import build_view, render, window

#: Bucket bounds in seconds, as the processes export them.
BUCKETS = (0.005, 0.016, 0.025, 0.1, float("inf"))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)


def exposition(gold_latencies_ms: list[float], *, cost: float, breaker: int = 0) -> Scrape:
    """One process's /metrics after Gold replied with ``gold_latencies_ms`` (all from the cache)."""
    seconds = [ms / 1000 for ms in gold_latencies_ms]
    lines = [
        "# TYPE npcflow_reply_latency_seconds histogram",
        *(
            f'npcflow_reply_latency_seconds_bucket{{tier="gold",le="{_le(le)}"}} '
            f"{sum(1 for v in seconds if v <= le)}"
            for le in BUCKETS
        ),
        f'npcflow_reply_latency_seconds_count{{tier="gold"}} {len(seconds)}',
        f'npcflow_reply_latency_seconds_sum{{tier="gold"}} {sum(seconds)}',
        "# TYPE npcflow_replies_total counter",
        f'npcflow_replies_total{{tier="gold",status="ok",served_by="cache"}} {len(seconds)}',
        'npcflow_replies_total{tier="gold",status="ok",served_by="default_intent"} 0',
        "# TYPE npcflow_cost_usd_total counter",
        f'npcflow_cost_usd_total{{tier="silver",tenant="gs"}} {cost}',
        "# TYPE npcflow_breaker_state gauge",
        f'npcflow_breaker_state{{breaker="tier:silver"}} {breaker}',
        "# TYPE npcflow_fallbacks_total counter",
        f'npcflow_fallbacks_total{{from_tier="silver",to_tier="bronze",reason="breaker_open"}} {breaker}',
        "# TYPE npcflow_consumer_lag gauge",
        'npcflow_consumer_lag{group="npcflow-worker-gold",topic="p.npc.requests.gold"} 7',
    ]
    out = Scrape()
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        out.samples.extend(family.samples)
    return out


def test_the_window_is_the_difference_of_two_scrapes() -> None:
    before = exposition([3.0] * 300, cost=1.0)
    after = exposition([3.0] * 300 + [20.0] * 10, cost=1.5)
    win = window(after, before)
    assert win.total("npcflow_replies_total", tier="gold") == 10
    # Since start the p95 is in the ≤ 5 ms bucket; the window's ten replies all took 16-25 ms.
    assert after.quantile("npcflow_reply_latency_seconds", 0.95, tier="gold") <= 0.005  # type: ignore[operator]
    assert 0.016 < win.quantile("npcflow_reply_latency_seconds", 0.95, tier="gold") <= 0.025  # type: ignore[operator]


def test_a_restarted_process_counts_from_zero_instead_of_going_negative() -> None:
    win = window(exposition([3.0] * 4, cost=0.2), exposition([3.0] * 100, cost=1.0))
    assert win.total("npcflow_replies_total", tier="gold") == 4
    assert win.total("npcflow_cost_usd_total") == 0.2


def test_view_rates_sla_cache_hits_breakers_and_lag() -> None:
    before = exposition([3.0] * 100, cost=1.0)
    after = exposition([3.0] * 100 + [20.0] * 10, cost=1.5, breaker=2)
    view = build_view(after, before, 2.0, {"gold": 16, "silver": 250, "bronze": 60000}, {"h:1": "router"})
    gold, silver, bronze = view.tiers
    assert gold.replies_per_s == 5.0 and gold.replies == 110
    assert gold.within_sla is False  # the window's p95 (> 16 ms) is judged, not the lifetime one
    assert 16 < gold.p95_ms <= 25  # type: ignore[operator]  # in ms, as the budgets are
    assert gold.cache_hit_rate == 1.0 and gold.served_by == {"cache": 110}
    assert gold.lag == 7 and silver.lag is None
    assert silver.cost_usd_per_min == 0.5 / 2.0 * 60
    assert silver.breaker == "open" and silver.fallbacks_out == 2
    assert bronze.replies == 0 and bronze.cache_hit_rate is None and bronze.within_sla is None
    assert view.fallbacks == {"silver→bronze breaker_open": 2}
    text = render(view)
    assert "tier:silver open" in text and "1/1 processes up" in text and "window 2.0 s" in text
    assert view.as_json()["tiers"][0]["within_sla"] is False


def test_first_refresh_has_no_window() -> None:
    view = build_view(exposition([3.0], cost=0.1), None, None, {"gold": 16}, {"h:1": "DOWN: refused"})
    assert view.window_s is None and view.tiers[0].p95_ms is None and view.tiers[0].within_sla is True
    assert "0/1 processes up" in render(view)


def test_metrics_bind_loopback_unless_told() -> None:
    assert Settings.from_env({}, stack_file=False).observability.metrics_host == "127.0.0.1"
    env = {"NPCFLOW_METRICS_HOST": "0.0.0.0"}
    assert Settings.from_env(env, stack_file=False).observability.metrics_host == "0.0.0.0"


def test_lag_from_offsets_a_consumer_already_tracks() -> None:
    from aiokafka import TopicPartition
    from prometheus_client import REGISTRY

    from pipeline.observability.families import export_offsets_lag

    ends = {
        TopicPartition("u.npc.requests", 0): 120,
        TopicPartition("u.npc.requests", 1): 40,
        TopicPartition("u.npc.requests", 2): 9,
    }
    committed = {TopicPartition("u.npc.requests", 0): 100, TopicPartition("u.npc.requests", 1): 40}
    # Partition 2: nothing committed yet, not counted.
    export_offsets_lag("u.router", ends, committed, set(ends))
    labels = {"group": "u.router", "topic": "u.npc.requests"}
    assert REGISTRY.get_sample_value("npcflow_consumer_lag", labels) == 20
    # After a rebalance took partition 0, its stale offsets no longer count here; losing all reads 0.
    export_offsets_lag("u.router", ends, committed, {TopicPartition("u.npc.requests", 1)})
    assert REGISTRY.get_sample_value("npcflow_consumer_lag", labels) == 0
