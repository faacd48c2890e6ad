"""The root of the settings: endpoints, a few process-wide values, and one group per concept.

Every process (router, tier workers, sinks, CLI, tests) builds one :class:`Settings` with
:meth:`Settings.from_env` at its entry point and passes it (or the part it needs) down, so a
service given in the environment is used everywhere and ``npcflow stack up`` only has to write
the endpoint variables to ``.npcflow/stack.env``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.config.clients import ClientSettings, ReplaySettings
from pipeline.config.engines import EngineSettings
from pipeline.config.fields import ConfigError, Number, setting
from pipeline.config.intents import IntentSettings
from pipeline.config.kafka import KafkaOptions
from pipeline.config.observability import ObservabilitySettings, ProcessSettings
from pipeline.config.sinks import SinkSettings
from pipeline.config.tools import McpServerSettings, ResultCacheSettings, ToolSettings
from pipeline.config.workers import ResilienceSettings, WorkerSettings

TIERS = ("gold", "silver", "bronze")


def _resolved(path: Path) -> Path:
    return path.resolve()


class Settings(BaseSettings):
    """Endpoints and every knob; ``None`` endpoints mean "not configured".

    ``Settings(...)`` is its arguments over the defaults and never reads the environment (tests,
    benchmarks and the demo build it so); :meth:`from_env` reads the environment and stack.env.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        arbitrary_types_allowed=True,
    )

    kafka_bootstrap: str | None = setting(
        "NPCFLOW_KAFKA_BOOTSTRAP",
        None,
        "Kafka bootstrap servers (host:port,...); when set, stack up uses it instead of starting a broker",
    )
    database_url: str | None = setting(
        "NPCFLOW_DATABASE_URL", None, "PostgreSQL (postgresql://...); when set, stack up uses it"
    )
    redis_url: str | None = setting(
        "NPCFLOW_REDIS_URL", None, "Redis (redis://...); when set, stack up uses it"
    )
    s3_endpoint: str | None = setting(
        "NPCFLOW_S3_ENDPOINT", None, "S3-compatible endpoint URL; when set, stack up uses it"
    )
    opensearch_url: str | None = setting(
        "NPCFLOW_OPENSEARCH_URL", None, "OpenSearch URL; when set, stack up uses it"
    )
    topic_prefix: str = setting(
        "NPCFLOW_TOPIC_PREFIX",
        "",
        "prefix for every topic name (sandboxes, replays)",
        pattern=r"^[A-Za-z0-9._-]*$",
    )
    state_dir: Annotated[Path, AfterValidator(_resolved)] = setting(
        "NPCFLOW_STATE_DIR",
        help="where the embedded stack keeps pids, logs, data and stack.env",
        default_factory=lambda: Path(".npcflow").resolve(),
        shown_default=".npcflow",
    )
    policy_file: str | None = setting(
        "NPCFLOW_POLICY_FILE", None, "the routing policy", shown_default="the packaged pipeline/policy.yaml"
    )
    embedded_kafka_nodes: Annotated[Literal[1, 3], Number] = setting(
        "NPCFLOW_KAFKA_NODES",
        1,
        "Kafka brokers the embedded stack starts when no NPCFLOW_KAFKA_BOOTSTRAP is given: 1, or 3 "
        "for a replicated cluster (fault tests)",
    )
    embedded_kafka_storage: Literal["memory", "disk"] = setting(
        "NPCFLOW_KAFKA_STORAGE",
        "memory",
        "where the embedded brokers keep their logs: memory (a tmpfs, /dev/shm, where the machine "
        "has one with room; on disk otherwise) or disk (<state dir>/kafka)",
    )
    kafka: KafkaOptions = KafkaOptions()
    worker: WorkerSettings = WorkerSettings()
    engines: EngineSettings = EngineSettings()
    process: ProcessSettings = ProcessSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    intents: IntentSettings = IntentSettings()
    client: ClientSettings = ClientSettings()
    replay: ReplaySettings = ReplaySettings()
    tools: ToolSettings = ToolSettings()
    mcp_server: McpServerSettings = McpServerSettings()
    result_cache: ResultCacheSettings = ResultCacheSettings()
    sinks: SinkSettings = SinkSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The arguments alone: a developer's environment must not leak into ``Settings(...)``."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, stack_file: bool = True) -> Settings:
        """Read the environment (or ``env``); what it does not set comes from ``stack.env``.

        ``stack.env`` is the file ``npcflow stack up --detach`` leaves in the state directory.
        """
        from pipeline.config.sources import read

        return read(env, stack_file=stack_file).settings

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields replaced and validated (tests, benchmarks, the demo)."""
        return type(self).model_validate({**dict(self), **changes})

    def require_kafka(self) -> str:
        """The bootstrap servers, or a clear error saying how to provide them."""
        if not self.kafka_bootstrap:
            raise ConfigError(
                "no Kafka broker configured: set NPCFLOW_KAFKA_BOOTSTRAP=host:port "
                "or start the embedded stack with `npcflow stack up --detach`"
            )
        return self.kafka_bootstrap


#: The endpoint fields, in the order ``stack.env`` lists them.
ENDPOINT_FIELDS = ("kafka_bootstrap", "database_url", "redis_url", "s3_endpoint", "opensearch_url")
#: Their variables (``NPCFLOW_KAFKA_BOOTSTRAP`` ...), in the same order.
ENDPOINT_VARS: tuple[str, ...] = tuple(
    str(Settings.model_fields[f].validation_alias) for f in ENDPOINT_FIELDS
)
#: How many Apache Kafka brokers the embedded stack can start (``NPCFLOW_KAFKA_NODES``).
KAFKA_NODE_CHOICES = (1, 3)
