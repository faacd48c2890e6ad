"""Tier workers' settings: their bounds, and resilience (fallback, breakers, shedding, fair share).

Why each default is what it is: docs/architecture.md, "Resilience".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator

from pipeline.config.fields import Group, setting

#: Engine calls at once per worker, by tier, when ``NPCFLOW_MAX_IN_FLIGHT`` is not set: Gold's
#: calls are short, Bronze's long.
DEFAULT_MAX_IN_FLIGHT = {"gold": 16, "silver": 8, "bronze": 4}


class WorkerSettings(Group):
    """The tier workers' knobs; ``max_in_flight`` None means the tier's default."""

    max_in_flight: int | None = setting(
        "NPCFLOW_MAX_IN_FLIGHT",
        None,
        "engine calls at once per worker",
        shown_default="gold 16, silver 8, bronze 4",
        ge=1,
        le=10_000,
    )
    max_pending: int = setting(
        "NPCFLOW_MAX_PENDING",
        1024,
        "records a worker holds at once, engine queue included (its memory bound)",
        ge=1,
        le=1_000_000,
    )
    engine_grace_s: float = setting(
        "NPCFLOW_ENGINE_GRACE_S",
        30.0,
        "how long past the deadline an engine call may run before it becomes an error reply",
        ge=0,
        le=600,
    )
    gold_batch_window_ms: float = setting(
        "NPCFLOW_GOLD_BATCH_WINDOW_MS",
        10.0,
        "Gold refreshes arriving within this window go to a batching engine as one batch (0: off)",
        ge=0,
        le=10_000,
    )
    gold_max_batch: int = setting(
        "NPCFLOW_GOLD_MAX_BATCH", 8, "the most refreshes in one batch", ge=2, le=1024
    )

    def in_flight_for(self, tier: str) -> int:
        return self.max_in_flight or DEFAULT_MAX_IN_FLIGHT.get(tier, 8)


def _weights(value: Any) -> Any:
    """``gs-eu-1=2,gs-us-1=1`` → {"gs-eu-1": 2.0, "gs-us-1": 1.0}; a mapping passes as it is."""
    if not isinstance(value, str):
        return value
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        tenant, sep, raw = part.partition("=")
        try:
            weight = float(raw) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not tenant.strip() or not weight > 0:
            raise ValueError(f"bad entry {part!r}; write tenant=weight pairs, e.g. gs-eu-1=2,gs-us-1=1")
        weights[tenant.strip()] = weight
    return weights


class ResilienceSettings(Group):
    """Fallback, breakers, load shedding and tenant fair share (docs/architecture.md, "Resilience")."""

    breaker_failures: int = setting(
        "NPCFLOW_BREAKER_FAILURES", 5, "consecutive failures that open a breaker", ge=1, le=10_000
    )
    breaker_cooldown_s: float = setting(
        "NPCFLOW_BREAKER_COOLDOWN_S",
        60.0,
        "how long an open breaker stays open before it admits probes (half-open)",
        gt=0,
        le=86_400,
    )
    breaker_probes: int = setting(
        "NPCFLOW_BREAKER_PROBES",
        1,
        "calls a half-open breaker admits at once; one success closes it, one failure reopens it",
        ge=1,
        le=1000,
    )
    breaker_latency_factor: float = setting(
        "NPCFLOW_BREAKER_LATENCY_FACTOR",
        4.0,
        "a tier whose windowed p95 engine latency exceeds its budget times this opens (0: off)",
        ge=0,
        le=1000,
    )
    breaker_latency_window_s: float = setting(
        "NPCFLOW_BREAKER_LATENCY_WINDOW_S", 10.0, "the latency breaker's window", gt=0, le=3600
    )
    breaker_latency_min_samples: int = setting(
        "NPCFLOW_BREAKER_LATENCY_MIN_SAMPLES",
        20,
        "calls in the window before the latency breaker judges",
        ge=1,
        le=1_000_000,
    )
    breaker_cache_s: float = setting(
        "NPCFLOW_BREAKER_CACHE_S",
        0.25,
        "how long a process trusts its copy of a breaker's shared state (no Redis trip per request)",
        ge=0,
        le=60,
    )
    fallback: bool = setting(
        "NPCFLOW_FALLBACK",
        True,
        "Silver → Bronze re-publish, Gold refresh → Silver's engine, router detour around an open Silver",
    )
    shedding: bool = setting(
        "NPCFLOW_SHEDDING", True, "degrade a request now when the queue predicts a missed deadline"
    )
    tenant_weights: Annotated[Mapping[str, float], BeforeValidator(_weights)] = setting(
        "NPCFLOW_TENANT_WEIGHTS",
        help="engine-slot shares per tenant, e.g. gs-eu-1=2,gs-us-1=1; others weigh 1",
        default_factory=dict,
        shown_default="all 1",
    )
