"""Observability's settings as data; :mod:`pipeline.config` reads them from the environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObservabilitySettings:
    """Pricing and where the processes' /metrics are (for ``npcflow top`` and ``validate``)."""

    #: Prices per tier (``NPCFLOW_PRICING_FILE``); None: the packaged ``pipeline/observability/pricing.yaml``.
    pricing_file: str | None = None
    #: ``host:port`` of every process's metrics port (``NPCFLOW_METRICS_TARGETS``, comma-separated).
    metrics_targets: tuple[str, ...] = ()
    #: Address the /metrics, /healthz, /readyz port binds (``NPCFLOW_METRICS_HOST``): loopback by
    #: default, so a laptop never exposes it; 0.0.0.0 in containers, where Prometheus and the
    #: kubelet's probes come from another network namespace.
    metrics_host: str = "127.0.0.1"
    #: Records a tier's consumer group may be behind before ``npcflow validate`` fails it.
    max_lag: int = 1000
