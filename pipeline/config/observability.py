"""How a pipeline process runs and is watched: event loop, heap, metrics port, pricing, validation."""

from __future__ import annotations

from typing import Annotated, Literal

from pipeline.config.fields import Group, Lower, Names, setting


class ProcessSettings(Group):
    """How a pipeline process runs: event loop, metrics port, readiness file for a supervisor."""

    event_loop: Annotated[Literal["uvloop", "asyncio"], Lower] = setting(
        "NPCFLOW_EVENT_LOOP", "uvloop", "uvloop, or asyncio for the standard event loop"
    )
    metrics_port: int | None = setting(
        "NPCFLOW_METRICS_PORT",
        None,
        "/metrics, /healthz, /readyz on NPCFLOW_METRICS_HOST:PORT from every process "
        "(0: a free port, named in the ready file)",
        shown_default="unset: no metrics port",
        ge=0,
        le=65535,
    )
    # faust runs its consumer in a second thread; with CPython's default 5 ms switch interval a record
    # fetched there can wait a whole interval for the agent's thread.
    gil_switch_s: float = setting(
        "NPCFLOW_GIL_SWITCH_S",
        0.0005,
        "the router's GIL switch interval (faust consumes in a second thread)",
        gt=0,
        le=1,
    )
    gc_gen0: int = setting(
        "NPCFLOW_GC_GEN0",
        20_000,
        "young-generation threshold of CPython's collector in pipeline processes, which also freeze "
        "their startup heap (0: leave the collector as it is; CPython's default is 700)",
        ge=0,
        le=10_000_000,
    )
    ready_file: str | None = setting(
        "NPCFLOW_READY_FILE",
        None,
        "written once the process's consumer group has given it partitions (demo, tests, benchmarks)",
    )


class ObservabilitySettings(Group):
    """Pricing and where the processes' /metrics are (for ``npcflow top`` and ``validate``)."""

    pricing_file: str | None = setting(
        "NPCFLOW_PRICING_FILE",
        None,
        "prices per tier for each reply's cost_usd",
        shown_default="the packaged pipeline/observability/pricing.yaml",
    )
    metrics_targets: Names = setting(
        "NPCFLOW_METRICS_TARGETS",
        (),
        "host:port,... of the processes' metrics ports, scraped by npcflow validate and npcflow top",
    )
    # Loopback by default, so a laptop never exposes it; 0.0.0.0 in containers, where Prometheus and
    # the kubelet's probes come from another network namespace.
    metrics_host: str = setting(
        "NPCFLOW_METRICS_HOST",
        "127.0.0.1",
        "the address the metrics port binds; 0.0.0.0 in containers (compose.yaml, k8s)",
        min_length=1,
    )
    max_lag: int = setting(
        "NPCFLOW_VALIDATE_MAX_LAG",
        1000,
        "records a tier's worker group may lag before npcflow validate fails it",
        ge=0,
    )
