"""A tier worker's configuration: the process's settings plus the worker's own bounds.

Apart from the loop (:mod:`workers.tier_worker`) so the CLI, tests and benchmarks can build one
without reading the loop, and so the bounds that shape memory and latency are in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.config import Settings
from topics.catalogue import Tier


class WorkerFailed(RuntimeError):
    """The worker could not record a result in Kafka and stopped, leaving the record to be replayed."""


@dataclass(frozen=True)
class WorkerConfig:
    """One tier worker's settings: the process's :class:`Settings` plus the worker's own bounds.

    The three bounds the environment sets come from :meth:`from_settings` (their defaults are
    declared in :mod:`pipeline.config.workers`); the rest are the worker's own constants.
    """

    settings: Settings
    tier: Tier
    #: Engine calls at once (the engine's own concurrency may lower it): ``NPCFLOW_MAX_IN_FLIGHT``.
    max_in_flight: int
    #: Records taken from Kafka and not yet replied to (engine queue included): the memory bound.
    max_pending: int
    #: Beyond the deadline, how long an engine call may run before it is abandoned as an error.
    engine_grace_s: float
    #: None: ``<prefix>npcflow-worker-<tier>``, shared by every worker of the tier.
    group_id: str | None = None
    #: How long a rebalance may wait for this worker to finish the engine calls it has started.
    rebalance_timeout_ms: int = 60_000
    #: The longest any engine call may take, whatever deadline the request claims.
    engine_timeout_cap_s: float = 600.0
    commit_interval_s: float = 0.2
    #: The consumer's fetch wait; None: the settings'.
    fetch_max_wait_ms: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, tier: Tier, **overrides: Any) -> WorkerConfig:
        """The tier's worker as the settings describe it; ``overrides`` for tests and benchmarks."""
        config = cls(
            settings=settings,
            tier=tier,
            max_in_flight=settings.worker.in_flight_for(tier.value),
            max_pending=settings.worker.max_pending,
            engine_grace_s=settings.worker.engine_grace_s,
        )
        return replace(config, **overrides)

    @property
    def prefix(self) -> str:
        return self.settings.topic_prefix

    @property
    def group(self) -> str:
        return self.group_id or f"{self.prefix}npcflow-worker-{self.tier.value}"
