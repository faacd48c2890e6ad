"""The typed settings every process reads: data only, filled in by :mod:`pipeline.config`.

Kept apart from the reading (which is :meth:`pipeline.config.Settings.from_env` alone) so each
half stays short; :mod:`pipeline.config` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.engine_settings import OpenAISettings, SageMakerSettings
from pipeline.kafka_security import KafkaSecurity

#: How long the broker may hold a fetch with nothing to return (Kafka's own default). Kafka answers
#: a waiting fetch as soon as a record arrives (``fetch_min_bytes`` 1), so this costs no latency:
#: it only bounds how often an idle consumer asks (docs/architecture.md, "The broker").
DEFAULT_FETCH_MAX_WAIT_MS = 500
#: Consumer-group session timeout: how long a dead member keeps its partitions.
DEFAULT_SESSION_TIMEOUT_S = 6.0
DEFAULT_ENGINE = "embedded"
#: Engine calls at once per worker, by tier: Gold's calls are short, Bronze's long.
DEFAULT_MAX_IN_FLIGHT = {"gold": 16, "silver": 8, "bronze": 4}
DEFAULT_MAX_PENDING = 1024
DEFAULT_ENGINE_GRACE_S = 30.0
#: faust runs its consumer in a second thread; with the default 5 ms GIL switch interval a record
#: fetched there can wait a whole interval for the agent's thread.
DEFAULT_GIL_SWITCH_S = 0.0005
#: Net new container objects between two young-generation collections (CPython's default: 700).
DEFAULT_GC_GEN0 = 20_000


@dataclass(frozen=True)
class KafkaOptions:
    """What every Kafka client of the product is built with (see :mod:`pipeline.kafka`)."""

    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    #: TLS and SASL (``NPCFLOW_KAFKA_SECURITY_PROTOCOL`` …; :mod:`pipeline.kafka_security`).
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


@dataclass(frozen=True)
class WorkerSettings:
    """The tier workers' knobs; ``max_in_flight`` None means the tier's default."""

    max_in_flight: int | None = None
    max_pending: int = DEFAULT_MAX_PENDING
    engine_grace_s: float = DEFAULT_ENGINE_GRACE_S
    #: Gold refreshes arriving within this window go to a batching engine as one batch (0: off).
    gold_batch_window_ms: float = 10.0
    gold_max_batch: int = 8

    def in_flight_for(self, tier: str) -> int:
        return self.max_in_flight or DEFAULT_MAX_IN_FLIGHT.get(tier, 8)


@dataclass(frozen=True)
class EngineSettings:
    """Which engine serves each tier, and the embedded engine's own knobs."""

    default: str = DEFAULT_ENGINE
    per_tier: Mapping[str, str] = field(default_factory=dict)
    #: llama.cpp threads; 0 means min(2, cores).
    embedded_threads: int = 0
    embedded_model_path: str | None = None
    #: ``openai``: an OpenAI-compatible server (vllm serve, trtllm-serve, llama.cpp's server).
    openai: OpenAISettings = field(default_factory=lambda: OpenAISettings())
    #: ``sagemaker``: Bronze as SageMaker Async Inference jobs.
    sagemaker: SageMakerSettings = field(default_factory=lambda: SageMakerSettings())
    #: ``vllm`` / ``tensorrt-llm`` in process: the model (HF id or local path) when the spec names none.
    gpu_model: str | None = None

    def spec_for(self, tier: str) -> str:
        """``NPCFLOW_ENGINE_GOLD`` etc. first, then ``NPCFLOW_ENGINE``, then ``embedded``."""
        return self.per_tier.get(tier) or self.default


@dataclass(frozen=True)
class ProcessSettings:
    """How a pipeline process runs: event loop, metrics port, readiness file for a supervisor."""

    event_loop: str = "uvloop"
    metrics_port: int | None = None
    gil_switch_s: float = DEFAULT_GIL_SWITCH_S
    #: 0 leaves CPython's collector as it is (see :func:`pipeline.eventloop.settle_heap`).
    gc_gen0: int = DEFAULT_GC_GEN0
    #: Written once the process's consumer group has given it partitions (demo, tests, benchmarks).
    ready_file: str | None = None


@dataclass(frozen=True)
class ResilienceSettings:
    """Fallback, breakers, load shedding and tenant fair share (docs/architecture.md, "Resilience")."""

    #: Consecutive failures that open a breaker.
    breaker_failures: int = 5
    #: How long an open breaker stays open before it admits probes (half-open).
    breaker_cooldown_s: float = 60.0
    #: Calls a half-open breaker admits at once; one success closes it, one failure reopens it.
    breaker_probes: int = 1
    #: A tier whose windowed p95 engine latency exceeds its budget times this factor opens (0: off).
    breaker_latency_factor: float = 4.0
    breaker_latency_window_s: float = 10.0
    breaker_latency_min_samples: int = 20
    #: How long a process trusts its copy of a breaker's shared state (no Redis trip per request).
    breaker_cache_s: float = 0.25
    #: Gold → Silver (refresh) and Silver → Bronze (re-publish) when a tier cannot answer in time.
    fallback: bool = True
    #: Degrade a request now when the queue predicts it would miss its deadline.
    shedding: bool = True
    #: Engine-slot shares per tenant (``NPCFLOW_TENANT_WEIGHTS=gs-a=2,gs-b=1``); others weigh 1.
    tenant_weights: Mapping[str, float] = field(default_factory=dict)


#: Model refreshes per second per active NPC. 2 Hz keeps an intent under 500 ms old plus the
#: engine's time, well inside the 1 s TTL; at 1 Hz an intent would expire just as its successor lands.
DEFAULT_GOLD_REFRESH_HZ = 2.0
#: Accepted refresh rates: below 0.1 Hz an intent outlives any sensible TTL; above 10 Hz the model
#: re-thinks faster than a game acts on it (and a broker carries 10 intents/s per NPC).
GOLD_REFRESH_HZ_RANGE = (0.1, 10.0)
#: How long an NPC stays active after a Gold request (or between a watch's renewals).
DEFAULT_ACTIVE_LEASE_MS = 10_000
ACTIVE_LEASE_MS_RANGE = (1_000, 3_600_000)


@dataclass(frozen=True)
class IntentSettings:
    """Gold's intent cache (docs/architecture.md, "Gold's two paths")."""

    #: An intent older than this is not served: Redis expires it, near caches fall back to the default.
    ttl_ms: int = 1000
    #: Each active NPC is re-thought this often per second (docs/architecture.md, "Keeping the active
    #: set fresh").
    refresh_hz: float = DEFAULT_GOLD_REFRESH_HZ
    #: An NPC leaves the active set this long after its last Gold request or watch renewal.
    active_lease_ms: int = DEFAULT_ACTIVE_LEASE_MS
    #: A refresh's deadline: the engine call is given up after it (and the NPC refreshed again later).
    refresh_timeout_ms: int = 2000
    #: Default intents per archetype; None: the packaged ``pipeline/default_intents.yaml``.
    defaults_file: str | None = None
    #: The router answers realtime Gold requests from its near cache and marks their NPCs active.
    fast_path: bool = True

    @property
    def refresh_period_ms(self) -> float:
        return 1000.0 / self.refresh_hz


@dataclass(frozen=True)
class ReplaySettings:
    """``npcflow replay`` (docs/architecture.md, "Replay for analysts")."""

    #: Requests the replay's join holds at once waiting for their decision and reply: its memory
    #: bound, whatever the window's length (a few KB each).
    max_open: int = 100_000


@dataclass(frozen=True)
class ClientSettings:
    """The game-server SDK (:class:`pipeline.client.NPCClient`)."""

    #: A request whose reply is this overdue (past its deadline) is sent again under the same id;
    #: 0 turns resends off. Workers answer every request by its deadline, so silence this long
    #: after it means the request or its reply was lost (docs/architecture.md, "Resilience").
    resend_after_s: float = 10.0
    #: How many times one request is sent again at most.
    max_resends: int = 3


@dataclass(frozen=True)
class SinkSettings:
    """The sinks on ``npc.outputs`` (docs/architecture.md, "Sinks")."""

    #: A batch is written when it holds this many outputs ...
    batch_size: int = 500
    #: ... or when its first output has waited this long.
    batch_ms: int = 200
    #: Backoff between retries doubles from 0.1 s up to this.
    retry_max_s: float = 10.0
    #: Tries of a batch that fails with a non-connection error before its records are tried one by one
    #: and the ones that still fail go to ``npc.outputs.dlq``.
    attempts: int = 3
    #: The S3 bucket of story arcs (``story-arcs/<prefix><request id>.json``).
    bucket: str = "npcflow-story-arcs"
    #: The PostgreSQL schema the tables live in (``npcflow db migrate`` creates it).
    pg_schema: str = "public"
    #: Objects larger than this are uploaded in parts (S3 multipart).
    multipart_mb: int = 8
