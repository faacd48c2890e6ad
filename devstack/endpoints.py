"""Where each service of the stack answers, and the ``stack.env`` file that tells other processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from devstack.errors import StackError
from pipeline import config
from pipeline.config import Settings

#: The file ``stack up`` writes in the state directory; :meth:`Settings.from_env` reads it.
STACK_ENV_FILE = "stack.env"

#: Names of the services, in the order they are reported.
SERVICES: tuple[str, ...] = ("kafka", "postgres", "redis", "s3", "opensearch")
SERVICE_ENV: dict[str, str] = dict(zip(SERVICES, config.ENDPOINT_VARS, strict=True))


@dataclass(frozen=True)
class StackEndpoints:
    """Where each service answers, whether started here or given by the environment."""

    kafka_bootstrap: str
    database_url: str
    redis_url: str
    s3_endpoint: str
    opensearch_url: str

    def as_env(self) -> dict[str, str]:
        """The ``NPCFLOW_*`` variables, in the order ``stack.env`` lists them."""
        return {SERVICE_ENV[name]: self.for_service(name) for name in SERVICES}

    def for_service(self, name: str) -> str:
        """The endpoint of one service by its short name (``kafka``, ``postgres``, ...)."""
        return str(getattr(self, _FIELD_OF[name]))

    def apply_to(self, settings: Settings | None = None) -> Settings:
        """``settings`` (default: all defaults) with these five endpoints in place of its own."""
        return (settings or Settings()).with_(**{field: getattr(self, field) for field in _FIELD_OF.values()})

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> StackEndpoints:
        """Build from ``NPCFLOW_*`` variables (e.g. a loaded ``stack.env``); all five must be there."""
        missing = [var for var in config.ENDPOINT_VARS if not values.get(var)]
        if missing:
            raise StackError(f"endpoint variables missing: {', '.join(missing)}")
        return cls(**{_FIELD_OF[name]: values[SERVICE_ENV[name]] for name in SERVICES})


#: Service name → field of StackEndpoints (and of Settings: the two use the same names).
_FIELD_OF: dict[str, str] = dict(zip(SERVICES, (f.name for f in fields(StackEndpoints)), strict=True))


def given_endpoints(settings: Settings) -> dict[str, str]:
    """Service name → endpoint for each service ``settings`` names ("" where it names none)."""
    return {name: (getattr(settings, _FIELD_OF[name]) or "").strip() for name in SERVICES}
