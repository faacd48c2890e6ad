"""Every ``NPCFLOW_*`` setting, read once from the environment into typed settings.

This is the only product module that reads ``os.environ``. Every process (router, tier workers,
sinks, CLI, tests) builds one :class:`Settings` with :meth:`Settings.from_env` at its entry point
and passes it (or the part it needs) down, so a service given in the environment is used
everywhere and ``npcflow stack up`` only has to write the endpoint variables to
``.npcflow/stack.env``. Why each default is what it is: docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.engine_settings import OpenAISettings, SageMakerSettings
from pipeline.env_reader import ConfigError, EnvReader, load_env_file
from pipeline.kafka_security import read_kafka_security
from pipeline.observability.settings import ObservabilitySettings
from pipeline.settings_data import (  # re-exported: importers name them from pipeline.config
    ACTIVE_LEASE_MS_RANGE,
    DEFAULT_ACTIVE_LEASE_MS,
    DEFAULT_ENGINE,
    DEFAULT_ENGINE_GRACE_S,
    DEFAULT_FETCH_MAX_WAIT_MS,
    DEFAULT_GC_GEN0,
    DEFAULT_GIL_SWITCH_S,
    DEFAULT_GOLD_REFRESH_HZ,
    DEFAULT_MAX_PENDING,
    DEFAULT_SESSION_TIMEOUT_S,
    GOLD_REFRESH_HZ_RANGE,
    ClientSettings,
    EngineSettings,
    IntentSettings,
    KafkaOptions,
    ProcessSettings,
    ReplaySettings,
    ResilienceSettings,
    SinkSettings,
    WorkerSettings,
)
from pipeline.tool_settings import (
    McpServerSettings,
    ResultCacheSettings,
    ToolSettings,
    ToolSettingsError,
    parse_allowlist,
    parse_names,
)

ENV_KAFKA_BOOTSTRAP = "NPCFLOW_KAFKA_BOOTSTRAP"
ENV_DATABASE_URL = "NPCFLOW_DATABASE_URL"
ENV_REDIS_URL = "NPCFLOW_REDIS_URL"
ENV_S3_ENDPOINT = "NPCFLOW_S3_ENDPOINT"
ENV_OPENSEARCH_URL = "NPCFLOW_OPENSEARCH_URL"
ENV_TOPIC_PREFIX = "NPCFLOW_TOPIC_PREFIX"
ENV_STATE_DIR = "NPCFLOW_STATE_DIR"
ENV_POLICY_FILE = "NPCFLOW_POLICY_FILE"
ENV_REPLAY_MAX_OPEN = "NPCFLOW_REPLAY_MAX_OPEN"
ENV_FETCH_MAX_WAIT_MS = "NPCFLOW_FETCH_MAX_WAIT_MS"
ENV_SESSION_TIMEOUT_S = "NPCFLOW_SESSION_TIMEOUT_S"
ENV_CLIENT_RESEND_AFTER_S = "NPCFLOW_CLIENT_RESEND_AFTER_S"
ENV_GOLD_BATCH_WINDOW_MS = "NPCFLOW_GOLD_BATCH_WINDOW_MS"
ENV_GOLD_MAX_BATCH = "NPCFLOW_GOLD_MAX_BATCH"
ENV_CLIENT_MAX_RESENDS = "NPCFLOW_CLIENT_MAX_RESENDS"
ENV_ENGINE = "NPCFLOW_ENGINE"
ENV_EMBEDDED_THREADS = "NPCFLOW_EMBEDDED_THREADS"
ENV_EMBEDDED_MODEL = "NPCFLOW_EMBEDDED_MODEL"
ENV_MAX_IN_FLIGHT = "NPCFLOW_MAX_IN_FLIGHT"
ENV_MAX_PENDING = "NPCFLOW_MAX_PENDING"
ENV_ENGINE_GRACE_S = "NPCFLOW_ENGINE_GRACE_S"
ENV_METRICS_PORT = "NPCFLOW_METRICS_PORT"
ENV_EVENT_LOOP = "NPCFLOW_EVENT_LOOP"
ENV_GIL_SWITCH_S = "NPCFLOW_GIL_SWITCH_S"
ENV_GC_GEN0 = "NPCFLOW_GC_GEN0"
ENV_READY_FILE = "NPCFLOW_READY_FILE"
ENV_INTENT_TTL_MS = "NPCFLOW_INTENT_TTL_MS"
#: Replaced by NPCFLOW_GOLD_REFRESH_HZ; setting it is an error that says so.
ENV_INTENT_REFRESH_INTERVAL_MS = "NPCFLOW_INTENT_REFRESH_INTERVAL_MS"
ENV_GOLD_REFRESH_HZ = "NPCFLOW_GOLD_REFRESH_HZ"
ENV_GOLD_ACTIVE_LEASE_MS = "NPCFLOW_GOLD_ACTIVE_LEASE_MS"
ENV_INTENT_REFRESH_TIMEOUT_MS = "NPCFLOW_INTENT_REFRESH_TIMEOUT_MS"
ENV_DEFAULT_INTENTS_FILE = "NPCFLOW_DEFAULT_INTENTS_FILE"
ENV_GOLD_FAST_PATH = "NPCFLOW_GOLD_FAST_PATH"
ENV_KAFKA_NODES = "NPCFLOW_KAFKA_NODES"
ENV_BREAKER_FAILURES = "NPCFLOW_BREAKER_FAILURES"
ENV_BREAKER_COOLDOWN_S = "NPCFLOW_BREAKER_COOLDOWN_S"
ENV_BREAKER_PROBES = "NPCFLOW_BREAKER_PROBES"
ENV_BREAKER_LATENCY_FACTOR = "NPCFLOW_BREAKER_LATENCY_FACTOR"
ENV_BREAKER_LATENCY_WINDOW_S = "NPCFLOW_BREAKER_LATENCY_WINDOW_S"
ENV_BREAKER_LATENCY_MIN_SAMPLES = "NPCFLOW_BREAKER_LATENCY_MIN_SAMPLES"
ENV_BREAKER_CACHE_S = "NPCFLOW_BREAKER_CACHE_S"
ENV_FALLBACK = "NPCFLOW_FALLBACK"
ENV_SHEDDING = "NPCFLOW_SHEDDING"
ENV_TENANT_WEIGHTS = "NPCFLOW_TENANT_WEIGHTS"
ENV_OPENAI_URL = "NPCFLOW_OPENAI_URL"
ENV_OPENAI_MODEL = "NPCFLOW_OPENAI_MODEL"
ENV_OPENAI_API = "NPCFLOW_OPENAI_API"
ENV_OPENAI_API_KEY = "NPCFLOW_OPENAI_API_KEY"
ENV_OPENAI_STALL_S = "NPCFLOW_OPENAI_STALL_S"
ENV_OPENAI_MAX_CONNECTIONS = "NPCFLOW_OPENAI_MAX_CONNECTIONS"
ENV_SAGEMAKER_URL = "NPCFLOW_SAGEMAKER_URL"
ENV_SAGEMAKER_ENDPOINT = "NPCFLOW_SAGEMAKER_ENDPOINT"
ENV_JOBS_BUCKET = "NPCFLOW_JOBS_BUCKET"
ENV_JOBS_POLL_S = "NPCFLOW_JOBS_POLL_S"
ENV_JOBS_GIVE_UP_S = "NPCFLOW_JOBS_GIVE_UP_S"
ENV_GPU_MODEL = "NPCFLOW_GPU_MODEL"
ENV_MCP_URL = "NPCFLOW_MCP_URL"
ENV_MCP_COMMAND = "NPCFLOW_MCP_COMMAND"
ENV_MCP_HOST = "NPCFLOW_MCP_HOST"
ENV_MCP_PORT = "NPCFLOW_MCP_PORT"
ENV_LORE_INDICES = "NPCFLOW_LORE_INDICES"
ENV_TOOL_TIMEOUT_MS = "NPCFLOW_TOOL_TIMEOUT_MS"
ENV_TOOL_BUDGET_FRACTION = "NPCFLOW_TOOL_BUDGET_FRACTION"
ENV_TOOL_ALLOWLIST = "NPCFLOW_TOOL_ALLOWLIST"
ENV_RESULT_CACHE = "NPCFLOW_RESULT_CACHE"
ENV_SINK_BATCH_SIZE = "NPCFLOW_SINK_BATCH_SIZE"
ENV_SINK_BATCH_MS = "NPCFLOW_SINK_BATCH_MS"
ENV_SINK_RETRY_MAX_S = "NPCFLOW_SINK_RETRY_MAX_S"
ENV_SINK_ATTEMPTS = "NPCFLOW_SINK_ATTEMPTS"
ENV_SINK_BUCKET = "NPCFLOW_SINK_BUCKET"
ENV_SINK_PG_SCHEMA = "NPCFLOW_SINK_PG_SCHEMA"
ENV_SINK_MULTIPART_MB = "NPCFLOW_SINK_MULTIPART_MB"
ENV_PRICING_FILE = "NPCFLOW_PRICING_FILE"
ENV_METRICS_TARGETS = "NPCFLOW_METRICS_TARGETS"
ENV_METRICS_HOST = "NPCFLOW_METRICS_HOST"
ENV_VALIDATE_MAX_LAG = "NPCFLOW_VALIDATE_MAX_LAG"

#: How many Apache Kafka brokers the embedded stack starts when no NPCFLOW_KAFKA_BOOTSTRAP is given:
#: one (dev, tests), or three (a replicated cluster for fault tests: ``stack up --brokers 3``).
KAFKA_NODE_CHOICES = (1, 3)

#: The endpoint variables, in the order ``stack.env`` lists them.
ENDPOINT_VARS: tuple[str, ...] = (
    ENV_KAFKA_BOOTSTRAP,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    ENV_S3_ENDPOINT,
    ENV_OPENSEARCH_URL,
)

TIERS = ("gold", "silver", "bronze")


def environ() -> dict[str, str]:
    """A copy of the process environment, for launchers that must pass it on to a child process."""
    return dict(os.environ)


def _parse_weights(raw: str | None) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (raw or "").split(","))):
        tenant, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not tenant.strip() or not weight > 0:
            raise ConfigError(
                f"{ENV_TENANT_WEIGHTS}: bad entry {part!r}; "
                "write tenant=weight pairs, e.g. gs-eu-1=2,gs-us-1=1"
            )
        weights[tenant.strip()] = weight
    return weights


def _flag(r: EnvReader, name: str, default: bool) -> bool:
    value = (r.str(name) or "").lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use 1 or 0")


def _intent_settings(r: EnvReader) -> IntentSettings:
    """Gold's intents; the refresh rate and the lease are range-checked (they size the engine's load)."""
    if r.str(ENV_INTENT_REFRESH_INTERVAL_MS) is not None:
        raise ConfigError(
            f"{ENV_INTENT_REFRESH_INTERVAL_MS} is gone: active NPCs are refreshed at "
            f"{ENV_GOLD_REFRESH_HZ} per second instead (500 ms was 2); unset it"
        )
    hz = r.float(ENV_GOLD_REFRESH_HZ, DEFAULT_GOLD_REFRESH_HZ)
    low, high = GOLD_REFRESH_HZ_RANGE
    if not low <= hz <= high:
        raise ConfigError(
            f"{ENV_GOLD_REFRESH_HZ}={hz:g}: model refreshes per second per active NPC must be between "
            f"{low:g} and {high:g} (default {DEFAULT_GOLD_REFRESH_HZ:g}; keep 1/rate well under "
            f"{ENV_INTENT_TTL_MS}, or intents expire before their successor lands)"
        )
    lease = r.int(ENV_GOLD_ACTIVE_LEASE_MS, DEFAULT_ACTIVE_LEASE_MS)
    low_ms, high_ms = ACTIVE_LEASE_MS_RANGE
    if lease is None or not low_ms <= lease <= high_ms:
        raise ConfigError(
            f"{ENV_GOLD_ACTIVE_LEASE_MS}={lease}: an NPC's active lease must be between {low_ms} and "
            f"{high_ms} ms (default {DEFAULT_ACTIVE_LEASE_MS})"
        )
    return IntentSettings(
        ttl_ms=r.int(ENV_INTENT_TTL_MS, 1000) or 1000,
        refresh_hz=hz,
        active_lease_ms=lease,
        refresh_timeout_ms=r.int(ENV_INTENT_REFRESH_TIMEOUT_MS, 2000) or 2000,
        defaults_file=r.str(ENV_DEFAULT_INTENTS_FILE),
        fast_path=_flag(r, ENV_GOLD_FAST_PATH, True),
    )


def _openai_settings(r: EnvReader) -> OpenAISettings:
    api = (r.str(ENV_OPENAI_API, "chat") or "chat").lower()
    if api not in ("chat", "completions"):
        raise ConfigError(f"{ENV_OPENAI_API}={api!r}: use chat or completions")
    return OpenAISettings(
        url=r.str(ENV_OPENAI_URL),
        model=r.str(ENV_OPENAI_MODEL),
        api=api,
        api_key=r.str(ENV_OPENAI_API_KEY),
        stall_s=r.float(ENV_OPENAI_STALL_S, 10.0),
        max_connections=r.int(ENV_OPENAI_MAX_CONNECTIONS, 32) or 32,
    )


def _tool_settings(r: EnvReader) -> dict[str, object]:
    """``tools``, ``mcp_server`` and ``result_cache`` of :class:`Settings`."""
    try:
        allowlist = parse_allowlist(r.str(ENV_TOOL_ALLOWLIST))
        cache_tiers = parse_names(r.str(ENV_RESULT_CACHE), ResultCacheSettings().tiers, TIERS)
        indices = parse_names(r.str(ENV_LORE_INDICES), McpServerSettings().lore_indices)
    except ToolSettingsError as exc:
        name = ENV_TOOL_ALLOWLIST if "tenant=" in str(exc) else ENV_RESULT_CACHE
        raise ConfigError(f"{name}: {exc}") from None
    return {
        "tools": ToolSettings(
            mcp_url=r.str(ENV_MCP_URL),
            mcp_command=r.str(ENV_MCP_COMMAND),
            timeout_ms=r.float(ENV_TOOL_TIMEOUT_MS, 50.0),
            budget_fraction=min(1.0, max(0.0, r.float(ENV_TOOL_BUDGET_FRACTION, 0.3))),
            allowlist=allowlist,
        ),
        "mcp_server": McpServerSettings(
            host=r.str(ENV_MCP_HOST, "127.0.0.1") or "127.0.0.1",
            port=r.int(ENV_MCP_PORT, 8765) or 8765,
            lore_indices=indices,
        ),
        "result_cache": ResultCacheSettings(tiers=cache_tiers),
    }


@dataclass(frozen=True)
class Settings:
    """Endpoints and every knob; ``None`` endpoints mean "not configured"."""

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None
    opensearch_url: str | None = None
    topic_prefix: str = ""
    state_dir: Path = field(default_factory=lambda: Path(".npcflow").resolve())
    policy_file: str | None = None
    kafka: KafkaOptions = field(default_factory=KafkaOptions)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    engines: EngineSettings = field(default_factory=EngineSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    #: How many Kafka brokers ``devstack`` starts (:data:`KAFKA_NODE_CHOICES`); unused with a given bootstrap.
    embedded_kafka_nodes: int = 1
    intents: IntentSettings = field(default_factory=IntentSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    #: Silver's MCP tools, the game-state MCP server, the result cache (pipeline/tool_settings.py).
    tools: ToolSettings = field(default_factory=ToolSettings)
    mcp_server: McpServerSettings = field(default_factory=McpServerSettings)
    result_cache: ResultCacheSettings = field(default_factory=ResultCacheSettings)
    sinks: SinkSettings = field(default_factory=SinkSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, stack_file: bool = True) -> Settings:
        """Read the environment (or ``env``); endpoints not set there come from ``stack.env``.

        ``stack.env`` is the file ``npcflow stack up --detach`` leaves in the state directory.
        """
        r = EnvReader(os.environ if env is None else env)
        state = Path(r.str(ENV_STATE_DIR, ".npcflow") or ".npcflow").resolve()
        file_values: dict[str, str] = {}
        env_file = state / "stack.env"
        if stack_file and env_file.exists():
            file_values = load_env_file(env_file)

        def endpoint(name: str) -> str | None:
            return r.str(name) or file_values.get(name) or None

        kafka_nodes = r.int(ENV_KAFKA_NODES, 1)
        if kafka_nodes not in KAFKA_NODE_CHOICES:
            raise ConfigError(
                f"{ENV_KAFKA_NODES}={kafka_nodes}: the embedded stack runs 1 broker, or 3 for fault tests"
            )
        per_tier = {t: spec for t in TIERS if (spec := r.str(f"{ENV_ENGINE}_{t.upper()}"))}
        return cls(
            kafka_bootstrap=endpoint(ENV_KAFKA_BOOTSTRAP),
            database_url=endpoint(ENV_DATABASE_URL),
            redis_url=endpoint(ENV_REDIS_URL),
            s3_endpoint=endpoint(ENV_S3_ENDPOINT),
            opensearch_url=endpoint(ENV_OPENSEARCH_URL),
            topic_prefix=r.str(ENV_TOPIC_PREFIX, "") or "",
            state_dir=state,
            policy_file=r.str(ENV_POLICY_FILE),
            kafka=KafkaOptions(
                fetch_max_wait_ms=r.int(ENV_FETCH_MAX_WAIT_MS, DEFAULT_FETCH_MAX_WAIT_MS)
                or DEFAULT_FETCH_MAX_WAIT_MS,
                session_timeout_s=r.float(ENV_SESSION_TIMEOUT_S, DEFAULT_SESSION_TIMEOUT_S),
                security=read_kafka_security(r.env),
            ),
            worker=WorkerSettings(
                max_in_flight=r.int(ENV_MAX_IN_FLIGHT, None),
                max_pending=r.int(ENV_MAX_PENDING, DEFAULT_MAX_PENDING) or DEFAULT_MAX_PENDING,
                engine_grace_s=r.float(ENV_ENGINE_GRACE_S, DEFAULT_ENGINE_GRACE_S),
                gold_batch_window_ms=r.float(ENV_GOLD_BATCH_WINDOW_MS, 10.0),
                gold_max_batch=max(2, r.int(ENV_GOLD_MAX_BATCH, 8) or 8),
            ),
            engines=EngineSettings(
                default=r.str(ENV_ENGINE, DEFAULT_ENGINE) or DEFAULT_ENGINE,
                per_tier=per_tier,
                embedded_threads=r.int(ENV_EMBEDDED_THREADS, 0) or 0,
                embedded_model_path=r.str(ENV_EMBEDDED_MODEL),
                openai=_openai_settings(r),
                sagemaker=SageMakerSettings(
                    url=r.str(ENV_SAGEMAKER_URL),
                    endpoint=r.str(ENV_SAGEMAKER_ENDPOINT, "npcflow-bronze") or "npcflow-bronze",
                    bucket=r.str(ENV_JOBS_BUCKET, "npcflow-jobs") or "npcflow-jobs",
                    poll_s=r.float(ENV_JOBS_POLL_S, 0.5),
                    give_up_s=r.float(ENV_JOBS_GIVE_UP_S, 120.0),
                ),
                gpu_model=r.str(ENV_GPU_MODEL),
            ),
            process=ProcessSettings(
                event_loop=(r.str(ENV_EVENT_LOOP, "uvloop") or "uvloop").lower(),
                metrics_port=r.int(ENV_METRICS_PORT, None),
                gil_switch_s=r.float(ENV_GIL_SWITCH_S, DEFAULT_GIL_SWITCH_S),
                gc_gen0=r.int(ENV_GC_GEN0, DEFAULT_GC_GEN0) or 0,
                ready_file=r.str(ENV_READY_FILE),
            ),
            embedded_kafka_nodes=kafka_nodes,
            observability=ObservabilitySettings(
                pricing_file=r.str(ENV_PRICING_FILE),
                metrics_targets=tuple(
                    t.strip() for t in (r.str(ENV_METRICS_TARGETS) or "").split(",") if t.strip()
                ),
                max_lag=r.int(ENV_VALIDATE_MAX_LAG, 1000) or 0,
                metrics_host=r.str(ENV_METRICS_HOST, "127.0.0.1") or "127.0.0.1",
            ),
            client=ClientSettings(
                resend_after_s=r.float(ENV_CLIENT_RESEND_AFTER_S, 10.0),
                max_resends=r.int(ENV_CLIENT_MAX_RESENDS, 3) or 0,
            ),
            replay=ReplaySettings(max_open=max(1, r.int(ENV_REPLAY_MAX_OPEN, 100_000) or 100_000)),
            intents=_intent_settings(r),
            sinks=SinkSettings(
                batch_size=max(1, r.int(ENV_SINK_BATCH_SIZE, 500) or 500),
                batch_ms=r.int(ENV_SINK_BATCH_MS, 200) or 0,
                retry_max_s=r.float(ENV_SINK_RETRY_MAX_S, 10.0),
                attempts=max(1, r.int(ENV_SINK_ATTEMPTS, 3) or 1),
                bucket=r.str(ENV_SINK_BUCKET, "npcflow-story-arcs") or "npcflow-story-arcs",
                pg_schema=r.str(ENV_SINK_PG_SCHEMA, "public") or "public",
                multipart_mb=max(5, r.int(ENV_SINK_MULTIPART_MB, 8) or 8),
            ),
            resilience=ResilienceSettings(
                breaker_failures=r.int(ENV_BREAKER_FAILURES, 5) or 5,
                breaker_cooldown_s=r.float(ENV_BREAKER_COOLDOWN_S, 60.0),
                breaker_probes=r.int(ENV_BREAKER_PROBES, 1) or 1,
                breaker_latency_factor=r.float(ENV_BREAKER_LATENCY_FACTOR, 4.0),
                breaker_latency_window_s=r.float(ENV_BREAKER_LATENCY_WINDOW_S, 10.0),
                breaker_latency_min_samples=r.int(ENV_BREAKER_LATENCY_MIN_SAMPLES, 20) or 20,
                breaker_cache_s=r.float(ENV_BREAKER_CACHE_S, 0.25),
                fallback=_flag(r, ENV_FALLBACK, True),
                shedding=_flag(r, ENV_SHEDDING, True),
                tenant_weights=_parse_weights(r.str(ENV_TENANT_WEIGHTS)),
            ),
            **_tool_settings(r),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests, benchmarks, the demo's per-process settings)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def require_kafka(self) -> str:
        """The bootstrap servers, or a clear error saying how to provide them."""
        if not self.kafka_bootstrap:
            raise ConfigError(
                f"no Kafka broker configured: set {ENV_KAFKA_BOOTSTRAP}=host:port "
                "or start the embedded stack with `npcflow stack up --detach`"
            )
        return self.kafka_bootstrap
