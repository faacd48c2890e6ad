"""Settings read from the environment, in one place.

Every process (router, tier workers, sinks, CLI, tests) reads its endpoints from the same
``NPCFLOW_*`` variables, so a service given in the environment is used everywhere and
``npcflow stack up`` only has to write those variables to ``.npcflow/stack.env``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_KAFKA_BOOTSTRAP = "NPCFLOW_KAFKA_BOOTSTRAP"
ENV_DATABASE_URL = "NPCFLOW_DATABASE_URL"
ENV_REDIS_URL = "NPCFLOW_REDIS_URL"
ENV_S3_ENDPOINT = "NPCFLOW_S3_ENDPOINT"
ENV_OPENSEARCH_URL = "NPCFLOW_OPENSEARCH_URL"
ENV_TOPIC_PREFIX = "NPCFLOW_TOPIC_PREFIX"
ENV_STATE_DIR = "NPCFLOW_STATE_DIR"
ENV_POLICY_FILE = "NPCFLOW_POLICY_FILE"
ENV_FETCH_MAX_WAIT_MS = "NPCFLOW_FETCH_MAX_WAIT_MS"
ENV_SESSION_TIMEOUT_S = "NPCFLOW_SESSION_TIMEOUT_S"

#: Consumer fetch wait on latency paths: the embedded broker answers a waiting fetch late (DESIGN §3).
DEFAULT_FETCH_MAX_WAIT_MS = 5
#: Consumer-group session timeout; a new member joins in about half of it (DESIGN §6).
DEFAULT_SESSION_TIMEOUT_S = 6.0

#: The endpoint variables, in the order ``stack.env`` lists them.
ENDPOINT_VARS: tuple[str, ...] = (
    ENV_KAFKA_BOOTSTRAP,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    ENV_S3_ENDPOINT,
    ENV_OPENSEARCH_URL,
)


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def state_dir() -> Path:
    """Where the embedded stack keeps pids, data and ``stack.env`` (``.npcflow`` in the cwd by default)."""
    return Path(os.environ.get(ENV_STATE_DIR, ".npcflow")).resolve()


def fetch_max_wait_ms() -> int:
    return int(_env(ENV_FETCH_MAX_WAIT_MS, str(DEFAULT_FETCH_MAX_WAIT_MS)) or DEFAULT_FETCH_MAX_WAIT_MS)


def session_timeout_s() -> float:
    return float(_env(ENV_SESSION_TIMEOUT_S, str(DEFAULT_SESSION_TIMEOUT_S)) or DEFAULT_SESSION_TIMEOUT_S)


def policy_file() -> str | None:
    """The routing policy file, or None for the packaged default (router and workers must agree)."""
    return _env(ENV_POLICY_FILE)


def load_env_file(path: Path) -> dict[str, str]:
    """Read a ``KEY=VALUE`` file such as ``.npcflow/stack.env``; skips blanks and ``#`` comments."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    """Endpoints and shared knobs; ``None`` means "not configured"."""

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None
    opensearch_url: str | None = None
    topic_prefix: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        """Environment first, then ``.npcflow/stack.env`` left by ``npcflow stack up`` (if any)."""
        file_values: dict[str, str] = {}
        env_file = state_dir() / "stack.env"
        if env_file.exists():
            file_values = load_env_file(env_file)

        def pick(name: str) -> str | None:
            return _env(name) or file_values.get(name) or None

        return cls(
            kafka_bootstrap=pick(ENV_KAFKA_BOOTSTRAP),
            database_url=pick(ENV_DATABASE_URL),
            redis_url=pick(ENV_REDIS_URL),
            s3_endpoint=pick(ENV_S3_ENDPOINT),
            opensearch_url=pick(ENV_OPENSEARCH_URL),
            topic_prefix=_env(ENV_TOPIC_PREFIX, "") or "",
        )

    def require_kafka(self) -> str:
        """The bootstrap servers, or a clear error saying how to provide them."""
        if not self.kafka_bootstrap:
            raise ConfigError(
                f"no Kafka broker configured: set {ENV_KAFKA_BOOTSTRAP}=host:port "
                "or start the embedded stack with `npcflow stack up --detach`"
            )
        return self.kafka_bootstrap
