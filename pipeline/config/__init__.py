"""Every ``NPCFLOW_*`` setting, declared once and read once into typed settings.

Each setting is one declaration (:func:`pipeline.config.fields.setting`): its variable, type,
default, range and help together, on a field of the group it belongs to:

- :mod:`~pipeline.config.settings`       the root: endpoints, paths, and one field per group
- :mod:`~pipeline.config.kafka`          every Kafka client's options, TLS and SASL
- :mod:`~pipeline.config.workers`        tier workers' bounds; resilience (fallback, breakers)
- :mod:`~pipeline.config.engines`        which engine serves each tier; OpenAI-compatible, SageMaker
- :mod:`~pipeline.config.intents`        Gold's intent cache and refresh rate
- :mod:`~pipeline.config.tools`          Silver's MCP tools, the MCP server, the result cache
- :mod:`~pipeline.config.sinks`          the sinks on ``npc.outputs``
- :mod:`~pipeline.config.observability`  how a process runs and is watched (loop, metrics, pricing)
- :mod:`~pipeline.config.clients`        the game-server SDK and replay
- :mod:`~pipeline.config.sources`        where values come from: environment, ``stack.env``, default
- :mod:`~pipeline.config.show`           ``npcflow config show`` and ``docs/settings.md``

Why each default is what it is: docs/architecture.md; every variable: docs/settings.md.
"""

from pipeline.config.clients import ClientSettings, ReplaySettings
from pipeline.config.engines import EngineSettings, OpenAISettings, SageMakerSettings
from pipeline.config.fields import ConfigError
from pipeline.config.intents import IntentSettings
from pipeline.config.kafka import KafkaOptions, KafkaSecurity, KafkaSecurityError
from pipeline.config.observability import ObservabilitySettings, ProcessSettings
from pipeline.config.settings import ENDPOINT_VARS, KAFKA_NODE_CHOICES, TIERS, Settings
from pipeline.config.sinks import SinkSettings
from pipeline.config.sources import environ, load_env_file
from pipeline.config.tools import McpServerSettings, ResultCacheSettings, ToolSettings
from pipeline.config.workers import DEFAULT_MAX_IN_FLIGHT, ResilienceSettings, WorkerSettings

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "ENDPOINT_VARS",
    "KAFKA_NODE_CHOICES",
    "TIERS",
    "ClientSettings",
    "ConfigError",
    "EngineSettings",
    "IntentSettings",
    "KafkaOptions",
    "KafkaSecurity",
    "KafkaSecurityError",
    "McpServerSettings",
    "ObservabilitySettings",
    "OpenAISettings",
    "ProcessSettings",
    "ReplaySettings",
    "ResilienceSettings",
    "ResultCacheSettings",
    "SageMakerSettings",
    "Settings",
    "SinkSettings",
    "ToolSettings",
    "WorkerSettings",
    "environ",
    "load_env_file",
]
