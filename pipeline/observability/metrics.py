"""Prometheus metrics shared by every npcflow process (one registry, names defined once).

Durations are exported in seconds, Prometheus' base unit (a dashboard or alert then never needs to
know which family is in which unit); npcflow's events carry milliseconds, so call sites observe
``ms / 1000``. A family's name ends in its unit (``_seconds``, ``_usd_total``), never has it in the
middle.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Histogram bounds in seconds: 1 ms to 60 s, with Gold's 16 ms and Silver's 250 ms budgets as bounds.
LATENCY_BUCKETS_SECONDS = (
    0.001, 0.002, 0.005, 0.01, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

REPLIES = Counter(
    "npcflow_replies_total", "Replies produced by tier workers", ["tier", "status", "served_by"]
)
ROUTED = Counter("npcflow_routed_total", "Requests routed to a tier", ["tier", "sla", "contradiction"])
DEAD_LETTERS = Counter("npcflow_dead_letters_total", "Events sent to the dead-letter topic", ["stage"])
REPLY_LATENCY_SECONDS = Histogram(
    "npcflow_reply_latency_seconds",
    "Request created → reply produced, seconds",
    ["tier"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
ENGINE_LATENCY_SECONDS = Histogram(
    "npcflow_engine_latency_seconds",
    "Time inside the engine, seconds",
    ["tier", "engine"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
REPLY_TOPIC_MISSING = Counter(
    "npcflow_reply_topic_missing_total",
    "Requests dead-lettered because their reply topic does not exist (workers never create topics)",
    ["tier"],
)
COST_USD = Counter("npcflow_cost_usd_total", "Estimated inference cost", ["tier", "tenant"])
BREAKER_STATE = Gauge(
    "npcflow_breaker_state",
    "Circuit breaker state as this process last saw it: 0 closed, 1 half-open, 2 open",
    ["breaker"],
)
BREAKER_TRANSITIONS = Counter(
    "npcflow_breaker_transitions_total", "Breaker state changes seen by this process", ["breaker", "state"]
)
FALLBACKS = Counter(
    "npcflow_fallbacks_total",
    "Requests (or Gold refreshes) moved to the next tier, by why: breaker_open, deadline, timeout, "
    "unavailable, error, shed",
    ["from_tier", "to_tier", "reason"],
)
SHED = Counter(
    "npcflow_shed_total",
    "Requests degraded because the queue predicted a missed deadline",
    ["tier", "action"],
)
LATE_RESULTS = Counter(
    "npcflow_late_results_total",
    "Engine results that finished after a fallback answered (outputs only)",
    ["tier"],
)
GOLD_ACTIVE_MARKS = Counter(
    "npcflow_gold_active_marks_total",
    "Gold requests' NPCs marked active by the router: announced (a lease on npc.active) or deduped "
    "(the lease announced is still more than half left)",
    ["decision"],
)
GOLD_ACTIVE_NPCS = Gauge("npcflow_gold_active_npcs", "Active NPCs this Gold worker keeps fresh")
GOLD_REFRESH_ASKED = Counter(
    "npcflow_gold_refresh_asked_total",
    "Refreshes the set rate asks for: active NPCs times NPCFLOW_GOLD_REFRESH_HZ, integrated over time",
)
GOLD_REFRESH_DONE = Counter(
    "npcflow_gold_refresh_done_total",
    "Scheduled refreshes finished, by result: written, engine_error, expired, empty, shed, error",
    ["result"],
)
GOLD_REFRESH_SHORTFALL = Gauge(
    "npcflow_gold_refresh_shortfall",
    "Share of the refreshes asked for in the last 10 s that were not written (0: keeping up)",
)
GOLD_REFRESH_HZ = Gauge(
    "npcflow_gold_refresh_hz",
    "Refreshes per second per active NPC over the last 10 s: asked (the setting) and achieved",
    ["kind"],
)
GOLD_REFRESH_INTERVAL_SECONDS = Histogram(
    "npcflow_gold_refresh_interval_seconds",
    "Time between two written refreshes of one active NPC: the age its intent reached before replaced",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0),
)
INTENT_UPDATES = Counter(
    "npcflow_intent_updates_total",
    "Refreshes served by Gold workers: written, engine_error, expired, empty",
    ["result"],
)
SINK_WRITTEN = Counter("npcflow_sink_written_total", "Outputs a sink wrote (committed after)", ["sink"])
SINK_RETRIES = Counter(
    "npcflow_sink_retries_total", "Batch writes retried, by why: unavailable or error", ["sink", "reason"]
)
SINK_BATCH_SECONDS = Histogram(
    "npcflow_sink_batch_duration_seconds",
    "One successful batch write, seconds",
    ["sink"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
RESULT_CACHE = Counter(
    "npcflow_result_cache_total",
    "Result-cache lookups before generating: hit, miss, bypass (the request needs live game state)",
    ["tier", "result"],
)
ENGINE_SECONDS_SAVED = Counter(
    "npcflow_engine_seconds_saved_total",
    "Engine time the result cache saved, seconds: the earlier answer's engine time, summed per hit",
    ["tier"],
)
TOOL_CALLS = Counter(
    "npcflow_tool_calls_total",
    "MCP tool calls for requests' tools, by outcome: ok, error, timeout, unavailable, refused",
    ["call", "outcome"],
)
TOOL_LATENCY_SECONDS = Histogram(
    "npcflow_tool_latency_seconds", "One MCP tool call, seconds", ["call"], buckets=LATENCY_BUCKETS_SECONDS
)
GAME_STATE_RECORDS = Counter(
    "npcflow_game_state_records_total",
    "game.state records the MCP server read: applied, stale (older version), deleted, invalid",
    ["result"],
)


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles ``{"p50": …}`` of client-side samples (demo and benchmarks)."""
    if not values:
        return {f"p{q}": None for q in qs}
    s = sorted(values)
    return {f"p{q}": round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2) for q in qs}


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> int | None:
    """Expose /metrics, /healthz and /readyz on host:port (``NPCFLOW_METRICS_HOST``, ``_PORT``).

    None serves nothing; 0 binds a free port, written to the ready file (``server.py``).
    """
    from pipeline.observability import server

    return server.serve(port, host)
